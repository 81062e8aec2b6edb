//! kubesbc's SIP proxy. Modules follow the request pipeline of DESIGN.md.
#![forbid(unsafe_code)]
