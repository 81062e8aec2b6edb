//! Listeners and connections: UDP, TCP, and the flow table that sends replies back.
