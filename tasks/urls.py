"""Connection URLs as operators may see them: passwords masked."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"
# Query parameters some clients accept in place of the userinfo password.
_SECRET_PARAMS = frozenset({"password", "passwd", "pass"})


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages, logs and views.

    Works for ``redis://``, ``rediss://``, ``amqp://``, SQLAlchemy URLs such as
    ``postgresql+psycopg://`` and leaves ``sqlite:///path`` as it is. A string that
    does not parse as a URL is masked whole rather than risk printing a secret.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    masked = url
    if "@" in parts.netloc:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        if has_password:
            # Rebuilt by replacement: urlunsplit would drop the '//' of 'sqlite:///x'.
            masked = masked.replace(parts.netloc, f"{user}:{MASK}@{hostinfo}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(key.lower() in _SECRET_PARAMS for key, _ in pairs):
            query = urlencode(
                [(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*"
            )
            masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked
