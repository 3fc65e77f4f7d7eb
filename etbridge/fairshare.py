"""Fair shares of the workers' capacity among applications (issue 18); pure.

When the workers bind (the planner may hand out fewer polls a tick than the
applications have due), each application gets a max-min fair share of the
slots by what it has due: every application with something due gets an equal
share, and what one does not need is split among the others, again and again.
A quiet application gets all it asks for as long as it asks for no more than
an equal share; a hot one gets the rest. Slots that do not divide evenly go
one each to the applications in a rotating order (``start``), so over ticks
no application is favoured. docs/applications.md, "Sharing the workers".
"""

from __future__ import annotations

from collections.abc import Mapping


def fair_shares(capacity: int | None, demands: Mapping[str, int], start: int = 0) -> dict[str, int]:
    """``{app: slots}``: max-min fair shares of ``capacity`` slots (None: no bound).

    No application gets more than its demand; the shares add up to
    ``min(capacity, sum of demands)``. ``start`` rotates who gets the slots
    left over when the capacity does not divide evenly.
    """
    shares = dict.fromkeys(demands, 0)
    if capacity is None:
        return {app: max(0, n) for app, n in demands.items()}
    names = list(demands)
    if names:
        offset = start % len(names)
        names = names[offset:] + names[:offset]
    left = max(0, capacity)
    wanting = [app for app in names if demands[app] > 0]
    while left > 0 and wanting:
        each = left // len(wanting)
        if each == 0:
            for app in wanting[:left]:
                shares[app] += 1
            break
        for app in wanting:
            give = min(each, demands[app] - shares[app])
            shares[app] += give
            left -= give
        wanting = [app for app in wanting if shares[app] < demands[app]]
    return shares
