-- The number's prefix (country calling code and leading national digits, as the
-- SMS-pumping detector groups numbers, e.g. `44:790`): a range of numbers, not a
-- number, kept in clear for the statistics per prefix.
ALTER TABLE verifications ADD COLUMN prefix TEXT;
