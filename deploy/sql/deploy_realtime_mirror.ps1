<#
.SYNOPSIS
    Deploy the realtime-mirror tables and stored procedures to SQL Server / Azure SQL with sqlcmd.

.DESCRIPTION
    Runs deploy_realtime_mirror.sqlcmd (next to this script), which includes
    sql/mssql/V*.sql in order. Paths are resolved relative to this script, so
    it can be called from any directory. sqlcmd runs with -b (stop and exit
    non-zero on the first error) and -I (QUOTED_IDENTIFIER ON).

    Authentication:
      -G            Microsoft Entra ID (sqlcmd -G): the signed-in account, a
                    managed identity or a service principal, as sqlcmd supports.
      -Username     SQL login; the password is read from $env:SQLCMDPASSWORD
                    (sqlcmd's own variable), never from the command line.
      neither       sqlcmd's default (Windows integrated authentication).

.EXAMPLE
    ./deploy/sql/deploy_realtime_mirror.ps1 -Server myserver.database.windows.net -Database mirror -G

.EXAMPLE
    $env:SQLCMDPASSWORD = '...'; ./deploy/sql/deploy_realtime_mirror.ps1 -Server localhost,1433 -Database mirror -Username sa -TrustServerCertificate
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string] $Server,
    [Parameter(Mandatory = $true)][string] $Database,
    [switch] $G,
    [string] $Username,
    [switch] $TrustServerCertificate,
    [string] $Sqlcmd = 'sqlcmd'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

if ($G -and $Username) {
    throw '-G (Entra ID) and -Username (SQL login) cannot be combined'
}
if ($Username -and -not $env:SQLCMDPASSWORD) {
    throw '-Username needs the password in $env:SQLCMDPASSWORD'
}

$scriptDir = Split-Path -Parent $MyInvocation.MyCommand.Path
$package = Join-Path $scriptDir 'deploy_realtime_mirror.sqlcmd'
$sqlDir = (Resolve-Path (Join-Path $scriptDir '../../sql/mssql')).Path
if (-not (Test-Path $package)) { throw "missing $package" }
if (-not (Test-Path (Join-Path $sqlDir 'V1__tables.sql'))) { throw "missing migrations in $sqlDir" }

$arguments = @('-S', $Server, '-d', $Database, '-b', '-I', '-v', "SqlDir=$sqlDir", '-i', $package)
if ($G) { $arguments += '-G' }
if ($Username) { $arguments += @('-U', $Username) }
if ($TrustServerCertificate) { $arguments += '-C' }

Write-Host "realtime-mirror: deploying to $Server / $Database with $Sqlcmd"
& $Sqlcmd @arguments
if ($LASTEXITCODE -ne 0) {
    throw "sqlcmd failed with exit code $LASTEXITCODE"
}
Write-Host 'realtime-mirror: done'
