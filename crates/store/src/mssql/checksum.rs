//! SQL Server side of [`ChecksumStore`] (placeholder until the T-SQL lands).

use super::MssqlStore;
use crate::checksum::{BucketSum, ChecksumStore, Dialect, Scope, StoredRow, Table};
use crate::{StoreError, StoreErrorKind};

fn unsupported() -> StoreError {
    StoreError::new(StoreErrorKind::Config, "range checksums are not implemented for SQL Server yet")
}

impl ChecksumStore for MssqlStore {
    fn dialect(&self) -> Dialect {
        Dialect::SqlServer
    }
    async fn bucket_sums(&self, _: Table, _: &Scope, _: u8, _: Option<&[u32]>) -> Result<Vec<(u32, BucketSum)>, StoreError> {
        Err(unsupported())
    }
    async fn rows_in_buckets(&self, _: Table, _: &Scope, _: u8, _: &[u32]) -> Result<Vec<StoredRow>, StoreError> {
        Err(unsupported())
    }
    async fn rows_by_key(&self, _: Table, _: &[String]) -> Result<Vec<StoredRow>, StoreError> {
        Err(unsupported())
    }
}
