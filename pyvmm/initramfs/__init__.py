"""Initramfs archives written by pyvmm: newc cpio (`cpio.Archive`) and the run-a-command image (`command`)."""

from pyvmm.initramfs.cpio import Archive, Entry, parse

__all__ = ["Archive", "Entry", "parse"]
