"""A bank on disk: build options (:mod:`.config`), the typed manifest (:mod:`.manifest`,
:mod:`.manifest_schema`), checksummed and ragged files (:mod:`.store`), vector codecs
(:mod:`.codec`) and one hook's stored vectors (:mod:`.vectors`)."""
