"""Scrubs: archive drives re-verified a rotating slice at a time, so that bit rot on a drive
that sits in a drawer is found while another copy still exists.

- :mod:`.budget`: how much one scrub may read (a share of the drive's bytes, a byte count,
  a time, or a whole pass);
- :mod:`.engine`: one scrub of one storage root: which files (oldest-verified first, within
  the drive's current pass), reading each from the disk at idle I/O priority, pausing while
  a card is imported, each result kept in the catalog (``file_checks``), damage reported by
  name with the sessions affected and where another copy is;
- :mod:`.findings`: what the catalog says about scrubs (``status``, the API, metrics);
- :mod:`.scheduler`: the daemon's side: a scrub when an archive drive is plugged in (once
  its reindex is done) and on a schedule for drives that stay.

A *pass* reads every file of a drive once. A file checked during the current pass is not
read again before every other file of the drive was: a scrub stops at the end of a pass,
and the next one begins the next pass. Files added meanwhile join the current pass.
"""
