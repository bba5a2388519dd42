"""`python -m meshnet.cni`: the CNI plugin (what the installed `meshnet-cni` runs)."""

import sys

from meshnet.cni.plugin import main

sys.exit(main())
