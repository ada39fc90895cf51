import struct

import numpy as np
import pytest

from fpdeep.platforms.host_client import (Counters, HostClient, HostError, Op, Status,
                                          RX_FIFO_DEPTH, MAX_SAMPLE_WORDS, REPLY_LENGTH)


class FakeDevice:
    """The protocol in Python, as a port: checks that the client never overfills the FIFO."""

    def __init__(self, weights, busy=False):
        self.weights = list(weights)
        self.busy = busy
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.words = []
        self.peak = 0

    def write(self, data):
        self.inbox += data
        self.peak = max(self.peak, len(self.inbox))
        assert len(self.inbox) <= RX_FIFO_DEPTH, "host overran the device's receive FIFO"

    def read(self, n):
        self._process()
        out, self.outbox = bytes(self.outbox[:n]), self.outbox[n:]
        return out

    def _process(self):
        data, self.inbox = bytes(self.inbox), bytearray()
        i = 0
        while i < len(data):
            op = data[i]
            if op == Op.SAMPLE:
                n, = struct.unpack_from("<H", data, i + 1)
                self.words += struct.unpack_from(f"<{n}h", data, i + 3)
                self.outbox += bytes([0x81])
                i += 3 + 2 * n
            elif op in (Op.READ_WEIGHT, Op.WRITE_WEIGHT):
                addr = int.from_bytes(data[i + 1:i + 4], "little")
                length = REPLY_LENGTH[Op(op)]
                if self.busy:
                    self.outbox += bytes([Status.BUSY]) + bytes(length - 1)
                elif addr >= len(self.weights):
                    self.outbox += bytes([Status.BAD_ADDRESS]) + bytes(length - 1)
                elif op == Op.READ_WEIGHT:
                    self.outbox += bytes([0x83]) + struct.pack("<i", self.weights[addr])
                else:
                    self.weights[addr], = struct.unpack_from("<i", data, i + 4)
                    self.outbox += bytes([0x84])
                i += 4 if op == Op.READ_WEIGHT else 8
            elif op == Op.WEIGHT_COUNT:
                self.outbox += bytes([0x85]) + len(self.weights).to_bytes(3, "little")
                i += 1
            elif op == Op.COUNTERS:
                self.outbox += bytes([0x82]) + struct.pack("<IIIIB", len(self.words), 2, 3, 4,
                                                           int(self.busy))
                i += 1
            elif op == Op.COUNTERS_LOSS:
                self.outbox += bytes([0x86]) + struct.pack("<IIIIIB", len(self.words), 2, 3, 4,
                                                           0xFFFF_FFFF, int(self.busy))
                i += 1
            else:
                self.outbox += bytes([Status.BAD_COMMAND, op])
                i += 1


def test_encodings():
    assert HostClient.sample_request([1, -1]).payload == bytes([1, 2, 0, 1, 0, 0xFF, 0xFF])
    assert HostClient.read_weight_request(0x12345).payload == bytes([3, 0x45, 0x23, 0x01])
    assert HostClient.write_weight_request(1, -2).payload == bytes([4, 1, 0, 0,
                                                                    0xFE, 0xFF, 0xFF, 0xFF])
    assert HostClient.counters_request().payload == b"\x06"
    assert HostClient.counters_request(loss=False).payload == b"\x02"
    assert REPLY_LENGTH[Op.COUNTERS] == 18 and REPLY_LENGTH[Op.COUNTERS_LOSS] == 22
    assert HostClient.weight_count_request().payload == b"\x05"
    for request in (HostClient.sample_request([0] * MAX_SAMPLE_WORDS),
                    HostClient.write_weight_request(0, 0)):
        assert len(request.payload) <= RX_FIFO_DEPTH


def test_bad_arguments():
    with pytest.raises(ValueError, match="sample word"):
        HostClient.sample_request([1 << 15])
    with pytest.raises(ValueError, match="at most"):
        HostClient.sample_request([0] * (MAX_SAMPLE_WORDS + 1))
    with pytest.raises(ValueError, match="addr"):
        HostClient.read_weight_request(1 << 24)
    with pytest.raises(TypeError, match="value"):
        HostClient.write_weight_request(0, 1.5)
    with pytest.raises(TypeError, match="port"):
        HostClient(object())


def test_client_against_fake_device():
    device = FakeDevice(range(-50, 50))
    client = HostClient(device)
    assert client.weight_count() == 100
    assert client.read_weights() == list(range(-50, 50))
    client.write_weights([7 * i for i in range(40)], start=10)
    assert client.read_weights(10, 40) == [7 * i for i in range(40)]
    assert client.read_weight(9) == -41
    pixels = np.arange(-32, 32).reshape(2, 4, 8)
    client.push_sample(3, pixels)
    assert device.words == [3, *pixels.transpose(1, 0, 2).reshape(-1)]   # row by row
    counters = client.counters()
    assert (counters.samples, counters.correct, counters.batches, counters.saturations,
            counters.loss_sum) == (65, 2, 3, 4, 0xFFFF_FFFF)
    assert not counters.busy
    assert client.counters(loss=False) == Counters(65, 2, 3, 4, busy=False, rx_error=False,
                                                   bad_command=False, loss_sum=None)
    assert device.peak == RX_FIFO_DEPTH     # pipelining fills the FIFO, never more


def test_client_errors():
    device = FakeDevice([1, 2, 3])
    client = HostClient(device)
    with pytest.raises(HostError, match="out of range"):
        client.read_weight(3)
    device.busy = True
    with pytest.raises(HostError, match="busy"):
        client.write_weight(0, 5)
    assert client.counters().busy and client.counters(loss=False).busy

    class Silent:
        def write(self, data):
            pass

        def read(self, n):
            return b""

    with pytest.raises(HostError, match="timed out"):
        HostClient(Silent()).counters()
    with pytest.raises(HostError, match="unexpected reply"):
        HostClient.counters_request().decode(bytes([Status.BAD_COMMAND, 6]) + bytes(20))
    with pytest.raises(HostError, match="expected 22 reply bytes, got 18"):
        HostClient.counters_request().decode(bytes([0x82]) + bytes(17))
