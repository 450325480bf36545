"""The seed's GPU rule, with a fake GPU list (the allocator only plans)."""
import pytest

from lmjupyter.gpus import GpuAllocationError, GpuAllocator, Holder, discover_gpus, parse_gpu_list


def test_eight_gpus_nproc_four_two_workers():
    assert GpuAllocator(list(range(8))).plan("m", [1, 2], 4, None) == {1: [0, 1, 2, 3], 2: [4, 5, 6, 7]}


def test_device_ids_two_to_five_nproc_two():
    assert GpuAllocator(list(range(8))).plan("m", [1, 2], 2, [2, 3, 4, 5]) == {1: [2, 3], 2: [4, 5]}


def test_gpus_held_by_another_model_are_skipped():
    allocator = GpuAllocator(list(range(4)), held={0: Holder("other", 1), 1: Holder("other", 1)})
    assert allocator.plan("m", [1], 2, None) == {1: [2, 3]}


def test_over_asking_names_holders():
    allocator = GpuAllocator(list(range(4)), held={0: Holder("other", 1)})
    with pytest.raises(GpuAllocationError, match=r"needs 4 GPU\(s\) but only 3 .* free .*other worker 1"):
        allocator.plan("m", [1], 4, None)


def test_unknown_device_ids_are_refused():
    with pytest.raises(GpuAllocationError, match="do not exist"):
        GpuAllocator([0, 1]).plan("m", [1], 1, [5])


def test_gpu_list_override(monkeypatch):
    monkeypatch.setenv("LMJUPYTER_GPUS", "0,1,2")
    assert discover_gpus() == [0, 1, 2]
    assert discover_gpus("") == []
    with pytest.raises(ValueError):
        parse_gpu_list("0,x")
