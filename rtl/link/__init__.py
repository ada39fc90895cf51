"""Inter-FPGA link stack: PHY (:mod:`.phy`), frame format (:mod:`.frame`), virtual
channels (:mod:`.channels`), transmitter and receiver (:mod:`.transmitter`,
:mod:`.receiver`), and one chip's endpoint (:mod:`.endpoint`)."""

__all__ = []
