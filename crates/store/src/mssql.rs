//! SQL Server adapter (in progress).
