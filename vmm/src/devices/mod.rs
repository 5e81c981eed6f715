//! Emulated devices. Today one: the 16550 UART on COM1.

pub mod serial;
