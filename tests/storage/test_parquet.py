import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from dd_core.storage.parquet import (
    PREDICTIONS_SCHEMA,
    ShardError,
    predictions_table,
    read_shard,
    shard_meta,
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
    assert shard_meta(table) == {"schema_version": 1, "fingerprint": "abc", "images": [{"id": 1}]}


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


def test_bad_rows_fail_before_writing(tmp_path):
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        predictions_table({**ROWS, "box": [[0, 0, 4], [1, 1, 5, 5], [2, 2, 3, 3]]}, {})
