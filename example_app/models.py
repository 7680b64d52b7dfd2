"""The survey's tracked models, on plain SQLAlchemy.

The server app (:mod:`example_app.server`) and the tablets
(:mod:`example_app.node`) share this module. It imports neither Flask nor
the app, so a node runs from it alone::

    reflectsync-node --models example_app.models sync
"""

from __future__ import annotations

import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from flask_reflectsync import track


class Base(DeclarativeBase):
    """The survey's declarative base; the server's ``db`` is built on it."""


@track
class Site(Base):
    """A place surveyed in the field."""

    __tablename__ = "site"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    observations: Mapped[list[Observation]] = relationship(
        back_populates="site", cascade="all, delete-orphan"
    )


@track
class Observation(Base):
    """A count of one species at a site."""

    __tablename__ = "observation"
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(sa.ForeignKey("site.id"))
    species: Mapped[str] = mapped_column(sa.String(100))
    count: Mapped[int] = mapped_column(default=0)
    seen_on: Mapped[datetime.date] = mapped_column(default=datetime.date.today)
    site: Mapped[Site] = relationship(back_populates="observations")
