"""Reads a run directory's TensorBoard event files with TensorBoard itself (the `tensorboard`
package from PyPI, which scripts/install-deps.sh --tests puts in .venv): its EventAccumulator is
what the TensorBoard server loads runs with, and it checks every record's CRC-32C, stopping at the
first bad one. Prints one JSON object per scalar, after one with the file version."""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})  # 0: keep every value
acc.Reload()
print(json.dumps({"file_version": acc.file_version}))
for tag in acc.Tags()["scalars"]:
    for e in acc.Scalars(tag):
        print(json.dumps({"tag": tag, "step": e.step, "value": e.value, "wall_time": e.wall_time}))
