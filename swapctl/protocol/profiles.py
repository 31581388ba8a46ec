"""Relay domains and the two numberings of header byte 4 found in the field."""

from __future__ import annotations

import enum

from swapctl.errors import UsageError


class Domain(enum.Enum):
    MARKET_DATA = "market_data"
    SIGNAL = "signal"
    EXECUTION = "execution"
    SYSTEM = "system"


class Profile(enum.Enum):
    ALPHAPULSE = "alphapulse"  # the codec's and the older relays': 1, 2, 3, 4
    TORQ = "torq"  # the newest types crate: 0, 1, 2, 3


_NUMBERS: dict[Profile, dict[Domain, int]] = {
    Profile.ALPHAPULSE: {
        Domain.MARKET_DATA: 1,
        Domain.SIGNAL: 2,
        Domain.EXECUTION: 3,
        Domain.SYSTEM: 4,
    },
    Profile.TORQ: {Domain.MARKET_DATA: 0, Domain.SIGNAL: 1, Domain.EXECUTION: 2, Domain.SYSTEM: 3},
}


def domain_byte(domain: Domain, profile: Profile = Profile.ALPHAPULSE) -> int:
    """The value of header byte 4 for `domain` under `profile`."""
    return _NUMBERS[profile][domain]


def domain_of(byte: int, profile: Profile = Profile.ALPHAPULSE) -> Domain | None:
    """The domain a header byte 4 means under `profile`, or None if it means nothing."""
    for domain, number in _NUMBERS[profile].items():
        if number == byte:
            return domain
    return None


def parse_domain(text: str) -> Domain:
    try:
        return Domain(text)
    except ValueError:
        names = ", ".join(d.value for d in Domain)
        raise UsageError(f"unknown domain {text!r}: use one of {names}") from None


def parse_profile(text: str) -> Profile:
    try:
        return Profile(text)
    except ValueError:
        names = ", ".join(p.value for p in Profile)
        raise UsageError(f"unknown numbering profile {text!r}: use one of {names}") from None
