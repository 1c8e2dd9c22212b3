-- 0019_usage_limits_spend_range: a spend rule's amount is at most 1,000,000,000 USD, the most
-- usaged counts (a check's spend has the same cap, and Redis's script counts micro-dollars
-- exactly only up to 2^53 of them). A larger amount was accepted by numeric(20, 6) and then
-- skipped by the daemon, leaving the pattern without that rule; now the INSERT or UPDATE that
-- writes one fails. NOT VALID: a row written before stays (the daemon reads it as unlimited and
-- logs it), and the migration cannot fail on it.
ALTER TABLE public.usage_limits ADD CONSTRAINT usage_limits_spend_range
    CHECK (dimension <> 'spend' OR amount <= 1000000000) NOT VALID;
COMMENT ON CONSTRAINT usage_limits_spend_range ON public.usage_limits IS
    'Spend at most 1,000,000,000 USD: more than usaged counts (NULL is unlimited).';
