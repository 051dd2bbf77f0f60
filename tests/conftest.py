import os
import sys

# tests/ helpers (kmodel, tracebuild) import as top-level modules
sys.path.insert(0, os.path.dirname(__file__))
