-- 0014_unknown_users: which of some user ids are not in auth.users, for the daemon; rejects
-- found by event id.
--
-- A batch refused because a row names a user that does not exist (23503) was split in halves
-- until each such row stood alone: about 2n statements for n rows of unknown users, every one
-- of them holding up the batch for every client. With this the daemon asks once, sets those
-- rows aside (usaged.rejects) and writes the rest in one COPY. usaged may not read auth.users;
-- this answers only whether ids exist. It reads nothing the daemon's role owns (see 0011).
CREATE FUNCTION public.usaged_unknown_users(ids uuid[])
RETURNS SETOF uuid
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT i
      FROM unnest(ids) AS i
     WHERE NOT EXISTS (SELECT 1 FROM auth.users AS u WHERE u.id = i)
$$;
COMMENT ON FUNCTION public.usaged_unknown_users(uuid[]) IS
    'The ids, of those given, that are not in auth.users (for usaged: rows of unknown users '
    'go to usaged.rejects without splitting their batch).';
-- Supabase grants new functions to its API roles by default: take that back explicitly.
REVOKE ALL ON FUNCTION public.usaged_unknown_users(uuid[])
    FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.usaged_unknown_users(uuid[]) TO usaged;

-- The daemon stores a refused row only when it is not there yet (a batch written again after a
-- lost commit, or replayed from the spool, would store it twice): found by its event id.
CREATE INDEX rejects_table_name_row_id_idx ON usaged.rejects (table_name, (row_data->>'id'));
