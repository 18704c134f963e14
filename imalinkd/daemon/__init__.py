"""The long-running service: event sources feeding one queue, one consumer deciding.

Layout (DESIGN §4):

- ``events``      immutable event values, the only thing sources and the consumer share;
- ``mountinfo``   ``/proc/self/mountinfo`` → MountAppeared / MountGone;
- ``udev``        pyudev block devices → BlockDeviceAdded / Removed (where udev runs);
- ``dropfolder``  watchdog → DropBatchSettled once a burst of files is complete;
- ``identify``    blkid and camera-layout probing (reads the OS, decides nothing);
- ``camera``      gphoto2 --auto-detect → CameraAppeared / CameraGone, and the camera job;
- ``policy``      pure decisions: which card rule applies, what a mount is, what to do;
- ``notify``      the sd_notify datagram protocol, without libsystemd;
- ``service``     ``run_daemon``: wiring, signals, jobs.
"""
