"""Random offline histories under sync scopes converge to each node's share
(hypothesis; see :doc:`/scopes`).

Each example starts from an empty server and three fresh SQLite nodes: two
field nodes of region ``north`` and ``south`` and a supervisor of both.
Surveys are scoped by region, answers follow their survey. The nodes add,
edit and drop surveys and answers in their share while offline, the
supervisor and the server's own app also move surveys between regions (so
rows leave and enter the field nodes' shares, with their answers), the
server app re-binds nodes to other regions (each then receives the
difference between its old share and its new one), and everyone
synchronises in a random order over a network that loses requests
and answers. Then every node gives up what the server refused for good
(its set-aside changes, see :ref:`set-aside`) and synchronises until quiet,
and the test checks that

* every node holds exactly the server's rows restricted to its share: the
  surveys of its regions and their answers, no more, no less;
* no row is duplicated (every row carries a unique tag);
* no committed change inside a share is lost: a survey nobody dropped or
  moved holds a title somebody wrote, and exists;
* a field node's push never wrote outside its share: every survey a field
  node created is in that node's region.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from flask_reflectsync import errors
from flask_reflectsync.client import SyncClient

from .conftest import AppFactory
from .http_server import SECRET_KEY, served
from .test_client_convergence import FlakyNetwork
from .test_scopes import define_field_models

#: The nodes' principals: two field nodes and a supervisor of both regions.
PRINCIPALS: list[dict[str, Any]] = [
    {"region": "north"},
    {"region": "south"},
    {"region": ["north", "south"]},
]
REGIONS = ("north", "south")
SERVER = 3  # the server's own app, the fourth writer


@dataclass
class Scoped:
    env: Any
    url: str
    Survey: Any
    Answer: Any
    directory: Path
    nodes: list[SyncClient] = field(default_factory=list)
    examples: int = 0
    #: Each node's principal in this example (the server app re-binds them).
    principals: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def scoped(make_app: AppFactory, tmp_path: Path) -> Iterator[Scoped]:
    env = make_app(
        SECRET_KEY=SECRET_KEY,
        REFLECTSYNC_OPEN_REGISTRATION=False,
        REFLECTSYNC_REGISTRATIONS_PER_MINUTE=1_000_000,
    )
    Survey, Answer, Species, Salary = define_field_models(env.db)
    sync = env.sync
    sync.scope(Survey, Survey.region, equals="region")
    sync.scope(Answer, follows=Answer.survey_id)
    sync.scope(Species, read_only=True)
    sync.scope(Salary, hidden=True)
    for model in vars(env.models).values():
        sync.scope(model, hidden=True)

    @sync.registration_check
    def principal(registration: dict[str, Any]) -> dict[str, Any]:
        return {"region": registration.get("info", {}).get("region")}

    with env.app.app_context():
        env.db.create_all()
    with served(env.app) as url, env.app.app_context():
        found = Scoped(env, url, Survey, Answer, tmp_path)
        try:
            yield found
        finally:
            _close(found)


def _close(net: Scoped) -> None:
    for node in net.nodes:
        node.close()
        node.engine.dispose()
    net.nodes.clear()


def _reset(net: Scoped) -> list[FlakyNetwork]:
    _close(net)
    metadata = net.env.db.metadata
    with net.env.db.engine.begin() as connection:
        for name in (
            "answer",
            "survey",
            "reflectsync_operations",
            "reflectsync_versions",
        ):
            connection.execute(sa.delete(metadata.tables[name]))
        counter = metadata.tables["reflectsync_version_counter"]
        connection.execute(sa.update(counter).values(value=0))
    networks = [FlakyNetwork() for _ in PRINCIPALS]
    example = net.examples
    net.examples += 1
    net.principals = [dict(p) for p in PRINCIPALS]
    for index, principal in enumerate(PRINCIPALS):
        name = f"e{example}n{index}"
        engine = sa.create_engine(f"sqlite:///{net.directory / name}.db")
        tables = [net.Survey.__table__, net.Answer.__table__]
        net.env.db.metadata.create_all(engine, tables=tables)
        client = SyncClient(
            net.url + "/sync",
            engine,
            name=name,
            models=[net.Survey, net.Answer],
            transport=networks[index],
            retries=0,
        )
        net.nodes.append(client)
        client.register(info=principal)
    return networks


@dataclass
class History:
    #: Every value written to a tag (surveys: titles, answers: texts).
    written: dict[str, set[str]] = field(default_factory=dict)
    #: Tags of rows dropped, or (surveys) moved to another region.
    gone: set[str] = field(default_factory=set)
    #: Survey tags created by each field node (index), with their region.
    created: dict[str, str] = field(default_factory=dict)

    def wrote(self, tag: str, value: str) -> None:
        self.written.setdefault(tag, set()).add(value)


def _tag(text: str) -> str:
    return text.split("~")[0]


def _regions(net: Scoped, writer: int) -> tuple[str, ...]:
    if writer == SERVER:
        return REGIONS
    region = net.principals[writer]["region"]
    return tuple(region) if isinstance(region, list) else (region,)


@contextmanager
def _session(net: Scoped, writer: int) -> Iterator[Session]:
    if writer != SERVER:
        with net.nodes[writer].Session() as session:
            yield session
        return
    with net.env.app.app_context():
        yield net.env.db.session


ACTIONS = (
    "add_survey",
    "add_answer",
    "retitle",
    "edit_answer",
    "drop_answer",
    "drop_survey",
    "move_survey",
    "rebind",
    "sync",
    "sync",
    "pull",
)


def _act(
    net: Scoped, writer: int, name: str, action: str, number: int, h: History
) -> None:
    S, A = net.Survey, net.Answer
    if action == "rebind":
        _rebind(net, writer, number, h)
        return
    regions = _regions(net, writer)
    with _session(net, writer) as session:
        surveys = session.scalars(sa.select(S).order_by(S.id)).all()
        # A node sees its share only; the server's app sees everything.
        surveys = [s for s in surveys if s.region in regions]
        answers = session.scalars(sa.select(A).order_by(A.id)).all()
        if action == "add_survey":
            region = regions[number % len(regions)]
            tag = f"{name}-s"
            session.add(S(region=region, title=tag))
            h.wrote(tag, tag)
            if writer in (0, 1):
                h.created[tag] = region
        elif action == "add_answer" and surveys:
            survey = surveys[number % len(surveys)]
            tag = f"{name}-a"
            session.add(A(survey_id=survey.id, text=tag))
            h.wrote(tag, tag)
        elif action == "retitle" and surveys:
            survey = surveys[number % len(surveys)]
            survey.title = f"{_tag(survey.title)}~{number}"
            h.wrote(_tag(survey.title), survey.title)
        elif action == "edit_answer" and answers:
            answer = answers[number % len(answers)]
            answer.text = f"{_tag(answer.text)}~{number}"
            h.wrote(_tag(answer.text), answer.text)
        elif action == "drop_answer" and answers:
            answer = answers[number % len(answers)]
            h.gone.add(_tag(answer.text))
            session.delete(answer)
        elif action == "drop_survey" and surveys:
            survey = surveys[number % len(surveys)]
            for answer in answers:
                if answer.survey_id == survey.id:
                    h.gone.add(_tag(answer.text))
                    session.delete(answer)
            h.gone.add(_tag(survey.title))
            session.delete(survey)
        elif action == "move_survey" and surveys and len(regions) > 1:
            survey = surveys[number % len(surveys)]
            survey.region = REGIONS[(REGIONS.index(survey.region) + 1) % 2]
            h.gone.add(_tag(survey.title))
        else:
            return
        session.commit()


#: What the server app re-binds a field node to (the user moved team).
REBINDS: list[Any] = ["north", "south", ["north", "south"]]


def _rebind(net: Scoped, writer: int, number: int, h: History) -> None:
    """The server app gives node ``writer`` another principal. Its queued
    changes to rows the new share leaves out will be refused and set aside
    (then discarded by the test), so the surveys it holds there no longer
    count as kept."""
    if writer == SERVER:
        return
    region = REBINDS[number % len(REBINDS)]
    node = net.nodes[writer]
    assert node.node_id is not None
    new = (region,) if isinstance(region, str) else tuple(region)
    S = net.Survey
    with node.Session() as session:
        for survey in session.scalars(sa.select(S)):
            if survey.region not in new:
                h.gone.add(_tag(survey.title))
    net.principals[writer] = {"region": region}
    net.env.sync.bind_node(node.node_id, {"region": region})


def _share(net: Scoped, regions: tuple[str, ...]) -> dict[str, list[tuple[Any, ...]]]:
    """The server's rows restricted to ``regions``."""
    S, A = net.Survey.__table__, net.Answer.__table__
    with net.env.db.engine.connect() as connection:
        surveys = connection.execute(
            sa.select(S).where(S.c.region.in_(regions)).order_by(S.c.id)
        ).all()
        keys = [row[0] for row in surveys]
        answers = connection.execute(
            sa.select(A).where(A.c.survey_id.in_(keys)).order_by(A.c.id)
        ).all()
    return {
        "survey": [tuple(r) for r in surveys],
        "answer": [tuple(r) for r in answers],
    }


def _local(node: SyncClient, net: Scoped) -> dict[str, list[tuple[Any, ...]]]:
    S, A = net.Survey.__table__, net.Answer.__table__
    with node.engine.connect() as connection:
        surveys = connection.execute(sa.select(S).order_by(S.c.id)).all()
        answers = connection.execute(sa.select(A).order_by(A.c.id)).all()
    return {
        "survey": [tuple(r) for r in surveys],
        "answer": [tuple(r) for r in answers],
    }


EXAMPLES = int(os.environ.get("REFLECTSYNC_SCOPE_CONVERGENCE_EXAMPLES", "25"))
#: CI draws the same examples on every run (REFLECTSYNC_HYPOTHESIS_DERANDOMIZE
#: = 1, see .ci/run): a merge must not land or fail by the luck of a draw.
#: Anywhere else each run explores new histories.
DERANDOMIZE = os.environ.get("REFLECTSYNC_HYPOTHESIS_DERANDOMIZE") == "1"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(ACTIONS), st.integers(0, 10**6)),
        min_size=4,
        max_size=30,
    ),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    seed=st.integers(0, 2**32),
)
# The supervisor moves a north survey south while the north node adds an
# answer to it offline: the answer is refused (outside the share now) and
# set aside; the survey and its answers leave north and reach south.
@example(
    steps=[
        (0, "add_survey", 0),
        (0, "add_answer", 0),
        (0, "sync", 0),
        (2, "sync", 0),
        (1, "sync", 0),
        (2, "move_survey", 0),
        (0, "add_answer", 1),
        (2, "sync", 0),
        (0, "sync", 0),
        (1, "pull", 0),
    ],
    loss=0.0,
    seed=0,
)
# Found by this test with 150 examples: north and south add surveys offline
# before their first pull, under the same keys; south's collide with north's,
# which south may not see, so south moves its own rows to new keys (before,
# they were set aside for good and lost).
@example(
    steps=[
        (0, "add_survey", 0),
        (0, "add_survey", 0),
        (0, "add_survey", 0),
        (1, "add_survey", 0),
    ],
    loss=0.0,
    seed=0,
)
# The server's app moves a survey out of north and back while north edits it.
@example(
    steps=[
        (0, "add_survey", 0),
        (0, "sync", 0),
        (3, "move_survey", 0),
        (0, "retitle", 3),
        (0, "pull", 0),
        (3, "move_survey", 0),
        (0, "sync", 0),
    ],
    loss=0.0,
    seed=0,
)
def test_random_scoped_histories_converge_to_each_share(
    scoped: Scoped, steps: list[tuple[int, str, int]], loss: float, seed: int
) -> None:
    net = scoped
    networks = _reset(net)
    for index, network in enumerate(networks):
        network.random.seed(seed + index)
        network.loss = loss
    history = History()
    example = net.examples
    for step, (writer, action, number) in enumerate(steps):
        if writer == SERVER and action in ("sync", "pull"):
            continue
        if action in ("sync", "pull"):
            node = net.nodes[writer]
            try:
                node.synchronize(tries=2) if action == "sync" else node.pull()
            except (errors.ServerUnreachableError, errors.PushRejectedError):
                pass  # lost on the network or still in conflict: later
            continue
        _act(net, writer, f"e{example}w{writer}s{step}", action, number, history)

    for network in networks:
        network.loss = 0.0
    for _ in range(3):
        for node in net.nodes:
            node.synchronize(tries=5)
    for node in net.nodes:
        node.discard_set_aside()
    for node in net.nodes:
        node.synchronize(tries=5)

    server = _share(net, REGIONS)
    for index, node in enumerate(net.nodes):
        assert node.pending_operations() == 0, node.name
        assert node.set_aside() == [], node.name
        assert _local(node, net) == _share(net, _regions(net, index)), node.name
    titles = [title for _, _, title in server["survey"]]
    texts = [text for _, _, text in server["answer"]]
    tags = [_tag(t) for t in titles + texts]
    assert len(tags) == len(set(tags)), "a row was duplicated"
    for value in titles + texts:
        assert value in history.written[_tag(value)]
    surveys = {_tag(title) for title in titles}
    for tag in history.written:
        if tag.endswith("-s") and tag not in history.gone:
            assert tag in surveys, f"{tag} was lost"
    regions = {_tag(title): region for _, region, title in server["survey"]}
    for tag, region in history.created.items():
        if tag in regions and tag not in history.gone:
            assert regions[tag] == region, f"{tag} was written outside its share"
