"""The logger's background writer, driven through a fake sink: a full queue, a failing write, a write after close."""

from __future__ import annotations

import threading
import time

import pytest

from diffaudit.writer import AsyncWriter, WriterClosed


class Sink:
    """Records items; blocks while ``gate`` is clear; raises for items in ``fail``."""

    def __init__(self, fail=()):
        self.items, self.fail = [], set(fail)
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, item):
        self.gate.wait(5)
        if item in self.fail:
            raise OSError(f"disk full writing {item}")
        self.items.append(item)


def test_items_reach_the_sink_in_order():
    sink = Sink()
    w = AsyncWriter(sink)
    for i in range(20):
        w.put(i)
    w.close()
    assert sink.items == list(range(20))


def test_a_full_queue_blocks_the_caller_until_the_thread_takes_an_item():
    sink = Sink()
    sink.gate.clear()  # the disk stalls
    w = AsyncWriter(sink, max_queue=2)
    w.put(0)  # taken by the thread, which now waits on the disk
    time.sleep(0.05)
    w.put(1)
    w.put(2)  # the queue holds 2: full
    done = threading.Event()
    threading.Thread(target=lambda: (w.put(3), done.set()), daemon=True).start()
    assert not done.wait(0.2)  # back-pressure: the fourth put waits
    sink.gate.set()
    assert done.wait(5)
    w.close()
    assert sink.items == [0, 1, 2, 3]


def test_a_failure_in_the_thread_surfaces_once_at_the_next_put_and_later_items_are_still_written():
    sink = Sink(fail={1})
    w = AsyncWriter(sink)
    w.put(0)
    w.put(1)
    with pytest.raises(OSError, match="disk full writing 1"):
        w.flush()
    w.put(2)  # raised once: the next put goes through
    w.close()
    assert sink.items == [0, 2]


def test_a_failure_of_the_last_item_surfaces_at_close():
    w = AsyncWriter(Sink(fail={"last"}))
    w.put("last")
    with pytest.raises(OSError, match="last"):
        w.close()
    assert w.closed


def test_a_write_after_close_raises_and_close_twice_is_harmless():
    w = AsyncWriter(Sink())
    w.close()
    w.close()
    with pytest.raises(WriterClosed, match="write after close"):
        w.put(1)


def test_the_logger_records_a_failed_write_and_training_goes_on(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from diffaudit.logger import RunLogger
    from diffaudit.noise import named_betas, schedule_from_betas

    a = torch.from_numpy(schedule_from_betas(named_betas("linear"))[0])
    calls = {"n": 0}
    with pytest.warns(UserWarning, match="writing run parts failed"):
        with RunLogger(tmp_path / "r", alphas_cumprod=a, num_bins=10, flush_every=10, window=5) as lg:
            real = lg._write_batch

            def flaky(batch):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise OSError("disk full")
                real(batch)

            monkeypatch.setattr(lg, "_write_batch", flaky)
            for s in range(40):
                lg.log(s, timesteps=torch.randint(0, 1000, (8,)), losses=torch.rand(8))
    assert lg.errors == ["OSError: disk full"]
    with pytest.raises(RuntimeError, match="after close"):
        lg.log(41, timesteps=torch.tensor([1]), losses=torch.tensor([0.5]))
