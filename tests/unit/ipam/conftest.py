"""Lets the IPAM tests import their fake mesh (`ipam_sim`) whatever pytest's import mode."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
