# The seed's cluster-wide settings: the pass it put on every command line and in rc.conf.
carp_pass = "testok"
failback = True  # ucarp runs with --preempt on the Debian node
