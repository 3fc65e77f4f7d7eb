"""Realistic hotel sales-and-catering data, drawn only from a seeded ``random.Random``.

Every function takes the generator explicitly so that one seed reproduces the same
organizations, bookings and edits, call for call.
"""

from __future__ import annotations

import random
import unicodedata
from datetime import date, timedelta
from typing import Any

STATUSES: tuple[str, ...] = ("lead", "tentative", "definite", "lost")
_STATUS_WEIGHTS: tuple[int, ...] = (35, 30, 25, 10)

_HOTELS: tuple[str, ...] = (
    "Grand Hôtel Riviera",
    "Harborview Marriott",
    "Hotel Zürichberg",
    "The Ritz Kyoto 京都",
    "Château Lumière",
    "Seaside Inn & Suites",
    "Parkhotel Müllerhof",
    "Hacienda del Sol",
    "Nordic Light Hotel",
    "Sakura Garden Resort",
)
_CURRENCIES: tuple[str, ...] = ("USD", "EUR", "CHF", "GBP", "CAD")
_TIME_ZONES: tuple[str, ...] = (
    "America/New_York",
    "Europe/Paris",
    "Europe/Zurich",
    "Asia/Tokyo",
    "America/Toronto",
)
_COMPANIES: tuple[str, ...] = (
    "Acme Corp",
    "Globex",
    "Initech",
    "Björk & Co",
    "Café Lumière",
    "Müller Logistik GmbH",
    "Núñez Abogados",
    "山田商事",
    "Søren Shipping",
    "Wayne Enterprises",
    "Ølstykke Brewing",
    "Łódź Tech Hub",
    "Umbrella Health",
    "Stark Industries",
    "Zoë's Bakery",
)
_FAMILIES: tuple[str, ...] = (
    "Smith",
    "Müller",
    "García",
    "O'Brien",
    "Nguyễn",
    "Kowalski",
    "Dubois",
    "Ólafsdóttir",
    "Tanaka",
    "Schüßler",
    "Rossi",
    "Johansson",
)
_FIRST_NAMES: tuple[str, ...] = (
    "Anna",
    "José",
    "Zoë",
    "Chloé",
    "Jürgen",
    "Mei",
    "Liam",
    "Søren",
    "Amélie",
    "Hiroshi",
    "Priya",
    "Mateo",
)
_EVENTS: tuple[str, ...] = (
    "Wedding",
    "Wedding Reception",
    "Annual Conference",
    "Board Meeting",
    "Gala Dinner",
    "Sales Kickoff",
    "Leadership Offsite",
    "Product Launch",
    "Holiday Party",
    "Bar Mitzvah",
    "Team Retreat",
    "Training Seminar",
    "Awards Banquet",
    "Rehearsal Dinner",
)
_NOTES: tuple[str, ...] = (
    "Client prefers the terrace — weather permitting ☀️",
    "Menu: crème brûlée for dessert; 3 guests végétariens",
    "Kosher meals: 12, halal: 4 — merci !",
    "日本語の資料を用意してください",
    "VIP: Herr Schüßler arrives early 🎉",
    "AV: two projectors, lapel mic, Wi-Fi for 150 devices",
    "Allergies: peanuts 🥜, gluten",
    "Deposit received — 50 %",
    "Room block: 20 rooms, king/queen mix",
    "Contrat signé, attente du dépôt",
    "Bitte Flipcharts in Raum Zürich bereitstellen",
    "Late checkout requested 🙏",
    "Ceremony on the lawn, reception in the Salón Real",
    "Décor: white roses 🌹 and fairy lights",
    "Follow up after Q3 budget approval",
)
_ROOMS: tuple[str, ...] = ("Ballroom", "Salon Élysée", "Terrace", "Boardroom", "Garden", "桜の間")
_START_TIMES: tuple[str, ...] = (
    "07:30",
    "08:00",
    "09:00",
    "10:00",
    "12:00",
    "14:00",
    "17:30",
    "18:00",
    "19:00",
)


def org_attributes(rng: random.Random, index: int) -> dict[str, str]:
    """Name, currency and time zone of the ``index``-th organization of the chain."""
    name = _HOTELS[index % len(_HOTELS)]
    if index >= len(_HOTELS):
        name = f"{name} {index // len(_HOTELS) + 1}"
    return {
        "name": name,
        "currency": _CURRENCIES[index % len(_CURRENCIES)],
        "time_zone": rng.choice(_TIME_ZONES),
    }


def account_attributes(rng: random.Random) -> dict[str, Any]:
    """A client company (or a family for social events)."""
    if rng.random() < 0.7:
        return {"name": rng.choice(_COMPANIES)}
    return {"name": f"{rng.choice(_FAMILIES)} Family"}


def contact_attributes(rng: random.Random) -> dict[str, Any]:
    """A person at a client account."""
    first = rng.choice(_FIRST_NAMES)
    last = rng.choice(_FAMILIES)
    email = f"{_ascii(first)}.{_ascii(last)}@example.com".lower()
    return {"first_name": first, "last_name": last, "email": email}


_JOB_TITLES = (
    "Event Planner",
    "Office Manager",
    "Executive Assistant",
    "HR Director",
    "Travel Coordinator",
    "Marketing Manager",
    "Bride",
    "Groom",
    "Parent of the Bride",
)


def phone(rng: random.Random) -> str:
    """A North American number in a fictional 555 exchange."""
    return f"+1-{rng.randint(201, 989)}-555-{rng.randint(100, 199):04d}"


def job_title(rng: random.Random) -> str:
    """What a contact does (or is, at a wedding)."""
    return rng.choice(_JOB_TITLES)


def user_attributes(rng: random.Random, index: int) -> dict[str, Any]:
    """A sales manager of the hotel (the booking owner)."""
    first = rng.choice(_FIRST_NAMES)
    last = rng.choice(_FAMILIES)
    return {"name": f"{first} {last}", "email": f"sales{index}@hotel.example"}


def booking_name(rng: random.Random) -> str:
    """An event name such as ``Müller Wedding`` or ``Initech Sales Kickoff 2027``."""
    host = rng.choice(_COMPANIES if rng.random() < 0.6 else _FAMILIES)
    name = f"{host} {rng.choice(_EVENTS)}"
    if rng.random() < 0.3:
        name = f"{name} {rng.choice(('2026', '2027', '— Phase II', 'Reunion'))}"
    return name


def notes(rng: random.Random) -> str:
    """Free text with non-ASCII characters and emoji."""
    picked = rng.sample(_NOTES, rng.randint(1, 3))
    if rng.random() < 0.3:
        picked.append(f"Room: {rng.choice(_ROOMS)}")
    return "\n".join(picked)


def status(rng: random.Random) -> str:
    """A pipeline status, weighted like a real sales funnel."""
    return rng.choices(STATUSES, _STATUS_WEIGHTS)[0]


def dates(rng: random.Random, today: date) -> tuple[str, str]:
    """Event start and end dates (YYYY-MM-DD), mostly in the coming months."""
    start = today + timedelta(days=rng.randint(-60, 400))
    end = start + timedelta(days=rng.choice((0, 0, 0, 1, 1, 2, 3)))
    return start.isoformat(), end.isoformat()


def times(rng: random.Random) -> tuple[str, str]:
    """Event start and end times (HH:MM)."""
    start = rng.choice(_START_TIMES)
    hours, minutes = (int(part) for part in start.split(":"))
    end_hour = min(23, hours + rng.randint(2, 6))
    return start, f"{end_hour:02d}:{minutes:02d}"


def guest_count(rng: random.Random) -> int:
    """Head count, from small meetings to large weddings."""
    return rng.choice((rng.randint(8, 40), rng.randint(40, 180), rng.randint(150, 600)))


def total_amount(rng: random.Random, guests: int) -> str:
    """Money as a decimal string with two places, like Rails renders BigDecimal."""
    cents = guests * rng.randint(4500, 32000) + rng.choice((0, 0, 50, 99))
    return f"{cents // 100}.{cents % 100:02d}"


def _ascii(text: str) -> str:
    """Drop diacritics and non-ASCII letters for e-mail addresses."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(ch for ch in decomposed if ch.isascii() and ch.isalnum())
    return kept or "guest"
