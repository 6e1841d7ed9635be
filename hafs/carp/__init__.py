"""CARP as FreeBSD speaks it: a sans-IO codec (wire), state machine (machine) and the agent."""
