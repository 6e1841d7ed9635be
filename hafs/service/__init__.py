"""What moves with a VIP: its ZFS dataset (zfs.py) and its own smbd instance (samba.py)."""
