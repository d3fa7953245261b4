//! septum node agent (being written).
