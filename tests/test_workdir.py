from facekp_jax import workdir as workdir_lib


def test_run_writer_writes_files_atomically(tmp_path):
  writer = workdir_lib.RunWriter(str(tmp_path / "w"))
  record = {"step": 10, "train_loss": 4.0, "train_rmse": 2.0, "val_rmse": 3.0, "val_nme": 0.1}
  writer.append_metrics(dict(record, epoch=1))
  writer.append_metrics(dict(record, epoch=2))
  writer.write_results({"val_rmse": 1.5})
  assert (tmp_path / "w" / "metrics.jsonl").read_text().count("\n") == 2
  writer.rewrite_metrics([dict(record, epoch=1)])  # A resume drops epochs past its checkpoint.
  assert (tmp_path / "w" / "metrics.jsonl").read_text().count("\n") == 1
  writer.close()
  assert not [p for p in (tmp_path / "w").iterdir() if p.name.startswith(".tmp-")]
  off = workdir_lib.RunWriter(str(tmp_path / "off"), enabled=False)
  off.write_results({"x": 1})
  assert not (tmp_path / "off").exists()


def test_config_differences_ignore_fields_a_saved_run_predates():
  import ml_collections
  config = ml_collections.ConfigDict({"a": 1, "b": {"c": (1, 2)}, "new_field": False})
  assert workdir_lib.config_differences({"a": 1, "b": {"c": [1, 2]}}, config) == []
  assert workdir_lib.config_differences({"a": 2, "b": {"c": [1, 2]}}, config) == ["a: 2 -> 1"]
  assert workdir_lib.config_differences({"a": 1, "b": {"c": [1, 2]}, "gone": 3}, config) == [
      "gone: 3 -> '<absent>'"]
