#!/usr/bin/env python3
"""A minimal MDA for fetchmail: stores the message read from stdin as a new file in DIR."""

import os
import sys
import tempfile

directory = sys.argv[1]
data = sys.stdin.buffer.read()
fd, _path = tempfile.mkstemp(dir=directory, suffix=".eml")
with os.fdopen(fd, "wb") as f:
    f.write(data)
