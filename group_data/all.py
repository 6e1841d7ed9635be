# Cluster-wide settings of the example cluster (hafs reads them; pyinfra passes them to deploys).
#
# Lab demo secrets: for a real cluster, delete carp_pass and smb_users here and put them in a
# TOML file readable only by you (chmod 600), named by secrets_file:
#   secrets_file = "secrets.toml"   # carp_pass = "..."  and  [smb_users]  alice = "..."
carp_pass = "hafs-lab-pass"
carp_advbase = 1
failback = True  # a repaired node takes its VIP back, once its data has caught up
zfs_pool = "tank"
replication_interval = 10  # seconds between snapshots sent to the backups
smb_users = {"alice": "alice-lab-pw", "hafs-check": "check-lab-pw"}
check_user = "hafs-check"
