"""Masking personal numbers in transcripts: mainland mobiles, landlines, 18-digit ID numbers.

Who may read them unmasked (the `view_pii` right): admins and supervisors. Supervisors review, correct
and approve transcripts and call residents back, and a correction made on masked text would overwrite
the number with asterisks. Stewards see transcripts masked: they reach residents through the household
record, and a recording may hold other people's numbers (a neighbour, a relative's ID card). The
stored transcript always keeps the original.
"""

from __future__ import annotations

import re

from api.users.models import Role, User

VIEW_PII_ROLES = frozenset({Role.admin, Role.supervisor})

_SEP = r"[ \-]?"
# Digits that are not part of a longer number on either side.
_ID_NUMBER = re.compile(r"(?<![0-9])([1-9][0-9]{5})((?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01]))"
                        r"([0-9]{3}[0-9Xx])(?![0-9A-Za-z])")
_MOBILE = re.compile(rf"(?<![0-9])((?:\+?86{_SEP})?1[3-9][0-9]){_SEP}([0-9]{{4}}){_SEP}([0-9]{{4}})(?![0-9])")
_LANDLINE = re.compile(r"(?<![0-9])(\(?0[1-9][0-9]{1,2}\)?[ \-]?)([0-9]{3,4})([ \-]?)([0-9]{4})(?![0-9])")


def can_view_pii(user: User) -> bool:
    """Whether this user reads phone and ID numbers unmasked."""
    return user.role in VIEW_PII_ROLES


def redact_text(text: str) -> str:
    """`text` with ID numbers (birth date and sequence), mobiles (middle four digits) and landlines
    (all but the area code and last four digits) replaced by asterisks."""
    text = _ID_NUMBER.sub(lambda m: m.group(1) + "*" * 8 + "***" + m.group(3)[-1], text)
    text = _MOBILE.sub(lambda m: m.group(1) + "****" + m.group(3), text)
    return _LANDLINE.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3) + m.group(4), text)


def redact_for(user: User, text: str) -> str:
    """`text` as this user may read it."""
    return text if can_view_pii(user) else redact_text(text)
