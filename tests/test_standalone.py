import json

import pytest

from dd_core.standalone import LabelRequest, pseudo_label_images
from dd_core.storage import join, list_files, read_bytes, write_bytes_atomic
from dd_core.tta.settings import MultiTransformSettings
from tests.conftest import save_random_checkpoint, write_tiny_coco


@pytest.mark.parametrize("images, out, message", [
    ("{b}/set/list.json", "{b}//set/./list.json", "over the --images input {b}/set/list.json"),
    ("{b}/set/images", "{b}/set", "{b}/set/annotations.json: exists and omnidistill label did not write it"),
])
def test_label_on_s3_refuses_before_writing_anything(tmp_path, s3, images, out, message):
    bucket, options = s3
    coco = write_tiny_coco(tmp_path / "set", num_images=2)
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), coco)
    for path in sorted((tmp_path / "set").rglob("*.*")):
        write_bytes_atomic(join(bucket, str(path.relative_to(tmp_path))), path.read_bytes(), options)
    write_bytes_atomic(f"{bucket}/set/list.json", json.dumps({"images": coco["images"]}).encode(), options)
    before = {name: read_bytes(join(bucket, name), options) for name in list_files(bucket, options=options)}
    with pytest.raises(ValueError) as refused:
        request = LabelRequest(ckpt, images.format(b=bucket), out.format(b=bucket), MultiTransformSettings(scales=(64,)))
        pseudo_label_images(request, options=options, progress=False)
    assert message.format(b=bucket) in str(refused.value)
    assert {name: read_bytes(join(bucket, name), options) for name in list_files(bucket, options=options)} == before
