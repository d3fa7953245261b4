//! septum CRD types (under construction).
