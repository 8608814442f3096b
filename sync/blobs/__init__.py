"""Content-addressed blobs (photos, signatures, voice notes): upload, resumable upload, ranged download."""
