"""Reads the username and password out of a Kafka `sasl.jaas.config` line (pure).

Owns `credentials`: what a Strimzi KafkaUser Secret (and most managed Kafka offerings) hold,
e.g. `org.apache.kafka.common.security.scram.ScramLoginModule required username="u"
password="p";`. The recorder has the same reader (recorder/kafka/options.py) for its own env.
"""

from __future__ import annotations

import re

# key="quoted value" (with \" and \\ escapes, as Kafka's JAAS parser takes) or key=bare-word.
_OPTION = re.compile(r'([A-Za-z_][\w.-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]+))')


def credentials(config: str) -> tuple[str, str]:
    """(username, password) of a JAAS login module line; ValueError naming what is missing."""
    options = {
        m[1]: re.sub(r"\\(.)", r"\1", m[2]) if m[2] is not None else m[3]
        for m in _OPTION.finditer(config)
    }
    missing = [key for key in ("username", "password") if not options.get(key)]
    if missing:
        raise ValueError(
            f"sasl.jaas.config has no {' and no '.join(missing)} option "
            '(expected e.g. ...LoginModule required username="..." password="...";)'
        )
    return options["username"], options["password"]
