"""hafs: highly available Samba/ZFS file-server clusters with a FreeBSD-compatible CARP agent."""

__version__ = "0.1.0"
