"""Deployment artifacts (deploy/): rendered, validated and checked offline. Nothing is pulled or run in a cluster."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
