-- dbo.FollowEvent: the follow-edge transitions, derived (contract v1.1).
--
-- Per edge, the observations (one per follow-edge event id, applied or stale)
-- in (time, event id) order; prev = the previous observation's state (NULL if
-- none, NULL after a delete). A row wherever dbo.FollowTransition lists
-- (prev, state), i.e. wherever model::follow_transition(prev, state) is Some.
-- A late event therefore re-derives the transitions around it.
--
-- The event id is ordered as its canonical text (lower-case hex, the order the
-- model uses), compared as bytes. LAG is supported by SQL Server 2012+ and by
-- Babelfish. The columns are those of the former FollowEvent table.
CREATE VIEW dbo.FollowEvent
AS
SELECT o.ObservationId AS FollowEventId,
       o.EventId,
       o.FollowerUserId,
       o.TargetUserId,
       t.EventType,
       o.SourceVersion AS CreatedAt,
       CONCAT(N'follows/', o.FollowerUserId, N'/targets/', o.TargetUserId) AS CorrelationId,
       CONCAT(N'{"fromState":', CASE WHEN o.PrevState IS NULL THEN N'null' ELSE CONCAT(N'"', o.PrevState, N'"') END,
              N',"toState":', CASE WHEN o.State IS NULL THEN N'null' ELSE CONCAT(N'"', o.State, N'"') END,
              N',"source":', CASE WHEN o.Source IS NULL THEN N'null' ELSE CONCAT(N'"', o.Source, N'"') END,
              N',"syncSource":"', o.SyncSource, N'"}') AS MetadataJson
FROM (
    SELECT x.ObservationId,
           x.EventId,
           x.FollowerUserId,
           x.TargetUserId,
           x.SourceVersion,
           x.State,
           x.Source,
           x.SyncSource,
           LAG(x.State) OVER (
               PARTITION BY x.FollowerUserIdKey, x.TargetUserIdKey
               ORDER BY x.SourceVersion, CAST(LOWER(CONVERT(CHAR(36), x.EventId)) AS VARBINARY(36))
           ) AS PrevState
    FROM dbo.FollowEdgeObservation AS x
) AS o
JOIN dbo.FollowTransition AS t
  ON t.FromState = ISNULL(o.PrevState, N'') AND t.ToState = ISNULL(o.State, N'');
