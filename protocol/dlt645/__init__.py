"""DL/T 645-2007, the Chinese RS-485 meter protocol: frames, messages, BCD values and meter
models as data. Pure code (bytes in, typed values out), like the rest of ``protocol``.

Why our own codec and not the ``dlt645`` package (PyPI, Apache-2.0, evaluated at 3.2.0):
its framing is sound (preamble, both 68H, length, checksum, end byte, resync past
noise), but it misses our bar on every other point we need:

- no remote control: its control codes stop at 1BH, so 1CH (trip, close allowed, direct
  close, alarm, protected supply) cannot be sent or understood, and prepaid switching is
  the reason we speak 645 at all;
- errors are values: a timeout, a bad frame, a meter's error reply and a wrong address all
  come back as ``None`` (logged through loguru, a dependency we would add for it), so the
  caller cannot tell "the meter refused" from "nobody answered";
- its client retries every request once by itself: a repeated control command is a
  second relay operation, which the gateway must decide, not the transport;
- frames are mutable objects and malformed input raises bare ``ValueError``;
- broadcast time (08H) is sent and read with the year first; the standard transmits
  multi-byte data low byte first (seconds first), as we do.

So the package is our interoperability peer in tests (its client against our simulator,
its server as a foreign meter for our transport), not a dependency.
"""
