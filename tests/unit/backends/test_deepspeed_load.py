"""DeepSpeed checkpoints load with torch's weights_only unpickler, on every Python 3.11.

Python 3.11.0-3.11.3 (Debian 12 ships 3.11.2) pickle an enum member as getattr(EnumClass,
"NAME"); DeepSpeed's ZeRO checkpoints hold ZeroStageEnum members. The pickles are written by hand
here (protocol 2, as those Pythons write them), so the test holds on any interpreter.
"""

import pickle
import zipfile

import pytest
import torch

from launcher.backends.deepspeed_files import load_weights_only


def _checkpoint_with(tmp_path, payload: bytes):
    """A torch.save zip whose data.pkl is `payload` (the rest from a real save)."""
    path = tmp_path / "state.pt"
    torch.save({}, path)
    with zipfile.ZipFile(path) as source:
        entries = {info.filename: source.read(info.filename) for info in source.infolist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    entries[name] = payload
    with zipfile.ZipFile(path, "w") as target:
        for filename, data in entries.items():
            target.writestr(filename, data)
    return path


def _getattr_pickle(module: str, owner: str, name: str) -> bytes:
    # {"zero_stage": getattr(module.owner, name)}, as Python 3.11.2 pickles an enum member
    return (b"\x80\x02}q\x00X\n\x00\x00\x00zero_stageq\x01c__builtin__\ngetattr\nq\x02c"
            + module.encode() + b"\n" + owner.encode() + b"\nq\x03X" + len(name).to_bytes(4, "little")
            + name.encode() + b"q\x04\x86q\x05Rq\x06s.")


def test_a_zero_stage_enum_pickled_by_name_loads(tmp_path):
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = _checkpoint_with(tmp_path, _getattr_pickle("deepspeed.runtime.zero.config", "ZeroStageEnum", "gradients"))
    assert load_weights_only(str(path)) == {"zero_stage": ZeroStageEnum.gradients}


@pytest.mark.parametrize("module, owner, name", [
    ("deepspeed.runtime.zero.config", "ZeroStageEnum", "__class__"),  # an allowed enum, not a member
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler", "__init__"),  # an allowed class, not an enum
    ("os", "system", "__call__"),  # not allowed at all
])
def test_any_other_getattr_is_refused(tmp_path, module, owner, name):
    path = _checkpoint_with(tmp_path, _getattr_pickle(module, owner, name))
    with pytest.raises(pickle.UnpicklingError):
        load_weights_only(str(path))
