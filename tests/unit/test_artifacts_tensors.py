import torch

from omnijobs.artifacts import FileConnector, bytes_to_tensors, new_key, tensors_to_bytes


def test_round_trip_through_a_connector(tmp_path):
    tensors = {
        "hidden": torch.randn(2, 3, 8, dtype=torch.bfloat16),
        "ids": torch.arange(10, dtype=torch.int64),
        "view": torch.randn(4, 4).t(),  # not contiguous
    }
    conn = FileConnector(tmp_path)
    uri = conn.put(new_key("job", "thinker", "hidden", ".safetensors"), tensors_to_bytes(tensors))
    back = bytes_to_tensors(conn.get(uri))
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)
