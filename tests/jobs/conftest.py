"""Fixtures for the batch pipeline tests.

Ray workers inherit the environment of the process that started the local Ray instance. The S3
test endpoint's fake credentials are set here at import time (before any fixture can start Ray),
so workers can sign requests whichever test area started Ray first; the endpoint itself is passed
explicitly through `StorageConfig.endpoint_url`.
"""

from __future__ import annotations

import os

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-key-id")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
