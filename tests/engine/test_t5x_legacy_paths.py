"""The T5X legacy reader reads arrays only from inside the checkpoint folder."""
import os
import pathlib

from flax import serialization
import numpy as np
import pytest
import tensorstore as ts

from prompt_tuning.engine.importers import t5x_legacy

FIXTURE = (pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "t5x_reference" /
           "test_t5_1_1_tiny" / "checkpoint_3")
VALUES = np.arange(6, dtype=np.float32).reshape(2, 3)


def _zarr(path):
  store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)},
                   "metadata": {"shape": [2, 3], "chunks": [2, 3], "dtype": "<f4"}},
                  create=True).result()
  store.write(VALUES).result()


def _checkpoint(folder, array_path, driver="zarr"):
  folder.mkdir(parents=True, exist_ok=True)
  spec = {"driver": driver, "kvstore": {"driver": "file", "path": array_path},
          "metadata": {"shape": [2, 3], "chunks": [2, 3], "dtype": "<f4"}}
  tree = {"version": 3, "optimizer": {"target": {"layer": {"kernel": spec}}, "state": {}}}
  (folder / "checkpoint").write_bytes(serialization.msgpack_serialize(tree))
  return folder


def test_an_array_inside_the_folder_reads(tmp_path):
  folder = _checkpoint(tmp_path / "ckpt", "target.layer.kernel")
  _zarr(folder / "target.layer.kernel")
  reader = t5x_legacy.T5XLegacyReader(str(folder))
  np.testing.assert_array_equal(reader.read("layer/kernel"), VALUES)


def test_the_real_fixture_still_reads():
  reader = t5x_legacy.T5XLegacyReader(str(FIXTURE))
  name = "encoder/layers_0/attention/query/kernel"
  assert reader.entries()[name].shape == (4, 4)
  assert np.isfinite(reader.read(name)).all() and reader.read(name).std() > 0


@pytest.mark.parametrize("array_path, why", [
    ("../secret", "leads outside the checkpoint folder"),
    ("target.layer.kernel/../../secret", "leads outside the checkpoint folder"),
    ("ABSOLUTE", "is not relative to the checkpoint folder"),
    ("file:///etc", "is not relative to the checkpoint folder"),
    ("", "names no file"),
    (".", "leads outside the checkpoint folder"),
])
def test_a_path_leaving_the_folder_is_refused_in_one_sentence(tmp_path, array_path, why):
  _zarr(tmp_path / "secret")  # a readable array just outside: the reader must not touch it
  if array_path == "ABSOLUTE":
    array_path = str(tmp_path / "secret")
  folder = _checkpoint(tmp_path / "ckpt", array_path)
  with pytest.raises(ValueError) as error:
    t5x_legacy.T5XLegacyReader(str(folder))
  assert str(error.value) == (f"T5X checkpoint {folder} gives array 'layer/kernel' the path "
                              f"{array_path or None!r}, which {why}" +
                              ("." if why == "names no file" else "; refusing it."))


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
  _zarr(tmp_path / "secret")
  folder = _checkpoint(tmp_path / "ckpt", "target.layer.kernel")
  os.symlink(tmp_path / "secret", folder / "target.layer.kernel")
  with pytest.raises(ValueError, match=r"^T5X checkpoint .* gives array 'layer/kernel' the path "
                     r"'target.layer.kernel', which leads outside the checkpoint folder; "
                     r"refusing it.$"):
    t5x_legacy.T5XLegacyReader(str(folder))


def test_a_driver_that_is_not_zarr_is_refused(tmp_path):
  folder = _checkpoint(tmp_path / "ckpt", "image.png", driver="png")
  with pytest.raises(ValueError, match=r"gives array 'layer/kernel' the tensorstore driver "
                     r"'png'; only \['zarr', 'zarr3', 'n5'\] are read.$"):
    t5x_legacy.T5XLegacyReader(str(folder))
