"""Run `python -m vmid ...` under cProfile and write its statistics to a file when it ends.

python bench/profiled.py STATS python -m vmid daemon ...   (bench/scale.py --profile)
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time

if __name__ == "__main__":
    stats, module = sys.argv[1], sys.argv[4]
    sys.argv = [module, *sys.argv[5:]]
    profile = cProfile.Profile(time.thread_time)
    try:
        profile.runcall(runpy.run_module, module, run_name="__main__", alter_sys=True)
    finally:
        profile.dump_stats(stats)
