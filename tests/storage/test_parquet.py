import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from dd_core.storage.parquet import (
    PREDICTIONS_SCHEMA,
    REJECTED_SCHEMA,
    SCHEMA_VERSION,
    ShardError,
    arrow_array,
    column_values,
    list_rows,
    numpy_view,
    predictions_table,
    read_shard,
    read_shard_footer,
    shard_meta,
    write_rejected,
    write_shard,
)

ROWS = {"image_id": [1, 1, 2], "file_name": ["a.png", "a.png", "b.png"], "category_id": [1, 1, 3],
        "box": [[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 3, 3]], "score": [0.9, 0.5, 0.7],
        "keypoints": [[1.0, 2.0], [3.0, 4.0], []], "keypoint_scores": [[0.5], [0.1], []], "num_transforms": [6, 6, 6]}


def test_roundtrip_keeps_rows_schema_and_meta(tmp_path):
    url = str(tmp_path / "shard-00000.parquet")
    write_shard(url, predictions_table(ROWS, {"fingerprint": "abc", "images": [{"id": 1}]}))
    table = read_shard(url)
    assert table.num_rows == 3 and table.column("category_id").to_pylist() == [1, 1, 3]
    assert shard_meta(table) == {"schema_version": SCHEMA_VERSION, "fingerprint": "abc", "images": [{"id": 1}]}


@pytest.mark.parametrize("as_numpy", [False, True])
def test_category_ids_beyond_int32_read_back_unchanged(tmp_path, as_numpy):
    """int32 held category ids up to 2**31 - 1: 2**31 wrapped to -2**31 (NumPy) or failed (lists)."""
    ids = [2**40, 2**31, 7]
    url = str(tmp_path / "big.parquet")
    write_shard(url, predictions_table({**ROWS, "category_id": np.array(ids) if as_numpy else ids}, {}))
    assert read_shard(url).column("category_id").to_pylist() == ids
    assert PREDICTIONS_SCHEMA.field("category_id").type == pa.int64() and SCHEMA_VERSION == 2


def _v1_shard(url: str) -> None:
    """A shard as version 1 wrote it: category_id int32, schema_version 1 in the footer."""
    v1_schema = PREDICTIONS_SCHEMA.set(2, pa.field("category_id", pa.int32(), nullable=False))
    table = pa.Table.from_pydict(ROWS, schema=v1_schema)
    pq.write_table(table.replace_schema_metadata({b"omnidistill": b'{"schema_version": 1, "fingerprint": "abc"}'}), url)


def test_a_version_1_shard_is_refused_as_old_by_both_readers(tmp_path):
    url = str(tmp_path / "shard-00000.parquet")
    _v1_shard(url)
    with pytest.raises(ShardError, match="shard-00000.parquet: predictions schema version 1, expected 2"):
        read_shard_footer(url)
    with pytest.raises(ShardError, match="shard-00000.parquet: predictions schema version 1, expected 2"):
        read_shard(url)


def test_numbers_that_do_not_fit_their_column_are_refused_not_wrapped(tmp_path):
    """NumPy casts wrap around silently; every integer column is range-checked instead."""
    with pytest.raises(ValueError, match=r"column image_id: 9223372036854775808 is outside the range of int64"):
        predictions_table({**ROWS, "image_id": np.array([1, 2**63, 2], np.uint64)}, {})
    with pytest.raises(ValueError, match=r"column num_transforms: 40000 is outside the range of int16"):
        predictions_table({**ROWS, "num_transforms": np.array([6, 40000, 6])}, {})
    with pytest.raises(ValueError, match=r"column image_id: expected integers for int64, got float64"):
        predictions_table({**ROWS, "image_id": np.array([1.5, 1.0, 2.0])}, {})
    with pytest.raises(ValueError, match=r"column image_id: 9223372036854775808 is outside the range of int64"):
        write_rejected(str(tmp_path / "_rejected.parquet"), [{"image_id": 2**63, "file_name": "a.png", "reason": "x"}])
    with pytest.raises(ValueError, match=r"values: 70000 is outside the range of int16 \(-32768\.\.32767\)"):
        arrow_array(np.array([5, 70_000]), pa.int16())
    assert not (tmp_path / "_rejected.parquet").exists()


@pytest.mark.parametrize("rejected", [[], [{"image_id": 7, "file_name": "été/7.png", "reason": "empty file"},
                                             {"image_id": 9, "file_name": "9.jpg", "reason": "not an image"}]])
def test_rejected_table_roundtrips_in_its_schema(tmp_path, rejected):
    write_rejected(str(tmp_path / "_rejected.parquet"), rejected)
    table = pq.read_table(tmp_path / "_rejected.parquet")
    assert table.schema.equals(REJECTED_SCHEMA) and table.to_pylist() == rejected


def test_shards_read_as_one_dataset_with_the_declared_schema(tmp_path):
    for i in range(3):
        write_shard(str(tmp_path / f"shard-{i:05d}.parquet"), predictions_table(ROWS, {}))
    dataset = ds.dataset(str(tmp_path), format="parquet")
    assert dataset.schema.remove_metadata().equals(PREDICTIONS_SCHEMA)
    assert dataset.to_table().num_rows == 9


def test_drifted_schema_is_refused(tmp_path):
    url = str(tmp_path / "drift.parquet")
    table = predictions_table(ROWS, {})
    pq.write_table(table.set_column(4, "score", pa.array([1.0, 2.0, 3.0], pa.float64())), url)
    with pytest.raises(ShardError, match="drift.parquet: schema does not match"):
        read_shard(url)


def test_corrupt_footer_and_missing_version(tmp_path):
    url = str(tmp_path / "cut.parquet")
    write_shard(url, predictions_table(ROWS, {}))
    data = open(url, "rb").read()
    open(url, "wb").write(data[:-12])
    with pytest.raises(ShardError, match="cut.parquet: not a readable Parquet file"):
        read_shard(url)
    plain = str(tmp_path / "plain.parquet")
    pq.write_table(pa.Table.from_pydict(ROWS, schema=PREDICTIONS_SCHEMA), plain)
    with pytest.raises(ShardError, match="schema version None"):
        read_shard(plain)


def test_a_fifo_or_folder_named_like_a_shard_is_unreadable_at_once(tmp_path):
    """A resumed run reads every shard's footer before labeling: a FIFO there must not block it."""
    import threading

    os.mkfifo(tmp_path / "fifo.parquet")
    (tmp_path / "folder.parquet").mkdir()
    errors = []

    def read_both():
        for name in ("fifo.parquet", "folder.parquet"):
            try:
                read_shard_footer(str(tmp_path / name))
            except ShardError as exc:
                errors.append(str(exc))

    reader = threading.Thread(target=read_both, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading a FIFO's footer blocked"
    assert "fifo.parquet: not a readable Parquet file" in errors[0] and "not a regular file" in errors[0]
    assert "folder.parquet: not a readable Parquet file" in errors[1]


def test_bad_rows_fail_before_writing(tmp_path):
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        predictions_table({**ROWS, "box": [[0, 0, 4], [1, 1, 5, 5], [2, 2, 3, 3]]}, {})


def test_numpy_columns_give_the_same_table_as_lists():
    arrays = {name: np.asarray(values) for name, values in ROWS.items()
              if name not in ("keypoints", "keypoint_scores")}
    with_lists = {**ROWS, "keypoints": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "keypoint_scores": [[], [], []]}
    arrays.update(keypoints=np.array([[1, 2], [3, 4], [5, 6]], np.float64), keypoint_scores=np.zeros((3, 0)))
    assert predictions_table(arrays, {"k": 1}).equals(predictions_table(with_lists, {"k": 1}), check_metadata=True)


def test_numpy_rows_of_the_wrong_width_are_refused_by_column():
    with pytest.raises(ValueError, match="column box: rows of 3 values, expected 4"):
        predictions_table({**ROWS, "box": np.zeros((3, 3))}, {})
    with pytest.raises(ValueError, match=r"column keypoints: expected rows x width, got an array of shape \(3,\)"):
        predictions_table({**ROWS, "keypoints": np.zeros(3)}, {})


def test_only_repeating_columns_are_dictionary_encoded(tmp_path):
    url = str(tmp_path / "s.parquet")
    write_shard(url, predictions_table(ROWS, {}))
    row_group = pq.ParquetFile(url).metadata.row_group(0)
    encodings = {row_group.column(i).path_in_schema.split(".")[0]: row_group.column(i).encodings
                 for i in range(row_group.num_columns)}
    assert "RLE_DICTIONARY" in encodings["file_name"] and "RLE_DICTIONARY" in encodings["image_id"]
    assert not {"RLE_DICTIONARY", "PLAIN_DICTIONARY"} & set(encodings["box"] + encodings["score"])
    assert read_shard(url).equals(predictions_table(ROWS, {}))


def test_numpy_views_follow_slices_and_refuse_nulls():
    array = arrow_array(np.arange(6, dtype=np.int64), pa.int64())
    assert numpy_view(array.slice(2, 3)).tolist() == [2, 3, 4]
    assert column_values(pa.table({"x": pa.chunked_array([array[:2], array[4:]])}), "x").tolist() == [0, 1, 4, 5]
    with pytest.raises(TypeError, match="no NumPy view of an array of int64 with 1 nulls"):
        numpy_view(pa.array([1, None], pa.int64()))


def test_list_rows_give_a_matrix_and_refuse_ragged_rows():
    table = predictions_table({**ROWS, "keypoints": np.array([[1, 2], [3, 4], [5, 6]], np.float32)}, {})
    assert list_rows(table.column("keypoints").slice(1)).tolist() == [[3, 4], [5, 6]]
    assert list_rows(table.column("keypoints").slice(3)).shape == (0, 0)
    with pytest.raises(ValueError, match=r"list rows of different widths \(\[0, 1\]\)"):
        list_rows(predictions_table(ROWS, {}).column("keypoint_scores"))


def test_labeling_and_selection_never_import_pandas(tmp_path):
    """pyarrow imports pandas, where installed, on the first pa.array, to_numpy or read_table:
    0.5 s per worker, 6% of labeling 512 images on a GPU. A stand-in pandas records any import."""
    fake = tmp_path / "site" / "pandas"
    fake.mkdir(parents=True)
    marker = str(tmp_path / "imported")
    (fake / "__init__.py").write_text(f"open({marker!r}, 'w').close()\nraise ImportError('stand-in')\n")
    script = f"""
import torch
from dd_core.data.unlabeled import UnlabeledImage
from dd_core.pseudo.columns import ShardColumns
from dd_core.pseudo.select import read_predictions, select_pseudo_labels
from dd_core.storage.parquet import predictions_table, write_rejected, write_shard
columns = ShardColumns({{1: 1}})
for i in range(3):
    columns.add({{"boxes": torch.rand(4, 4) * 50, "labels": torch.ones(4, dtype=torch.int64), "scores": torch.rand(4),
                 "keypoints": torch.rand(4, 17, 3), "keypoints_scores": torch.rand(4, 17)}},
                UnlabeledImage(i, f"{{i}}.png"))
images = [{{"id": i, "file_name": f"{{i}}.png", "width": 64, "height": 64}} for i in range(3)]
write_shard({str(tmp_path / 's.parquet')!r}, predictions_table(columns.columns(), {{"images": images, "rejected": []}}))
labeled = {{"images": images, "categories": [{{"id": 1, "name": "person"}}],
           "annotations": [{{"id": 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 0,
                            "keypoints": [1, 1, 2] * 17, "num_keypoints": 17}}]}}
coco, _ = select_pseudo_labels(read_predictions([{str(tmp_path / 's.parquet')!r}]), labeled, "keypoints")
assert coco["annotations"], coco
write_rejected({str(tmp_path / 'r.parquet')!r}, [{{"image_id": 7, "file_name": "7.png", "reason": "empty file"}}])
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(Path(__file__).parents[2])])}
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
    assert not (tmp_path / "imported").exists()


def test_a_shard_with_unreadable_metadata_is_one_to_redo(tmp_path):
    import pyarrow.parquet as pq

    from dd_core.storage.parquet import PREDICTIONS_SCHEMA, ShardError, read_shard, read_shard_footer

    url = str(tmp_path / "shard-00000.parquet")
    pq.write_table(PREDICTIONS_SCHEMA.empty_table().replace_schema_metadata({b"omnidistill": b"{not json"}), url)
    with pytest.raises(ShardError, match=r"shard-00000.parquet: unreadable shard metadata"):
        read_shard_footer(url)
    with pytest.raises(ShardError, match=r"shard-00000.parquet: unreadable shard metadata"):
        read_shard(url)
