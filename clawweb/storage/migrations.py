"""The schema of both engines, in one place: each list's entries upgrade a database by one version, run in
order by whichever process takes the engine's migration lock first (sqlite.py: a file lock; postgres.py: an
advisory lock). Never edit an entry once released; add one, to each list where the change applies.

PostgreSQL's first entry is the whole schema as SQLite's reached it at version 8, so a database copied over
(``clawweb db copy``) holds the same columns in the same order. Its triggers keep the same quota counts; its
search runs on trigram indexes over the tables themselves (search_postgres.py), not on FTS5's tables.
"""

from __future__ import annotations

# SQLite: each entry upgrades the schema by one version (PRAGMA user_version); never edit an entry once released.
SQLITE = [
    """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL,
        system_prompt TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX conversations_updated ON conversations (updated_at DESC);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL DEFAULT '',
        thinking TEXT NOT NULL DEFAULT '',
        model TEXT,
        status TEXT NOT NULL DEFAULT 'done',   -- done | streaming | stopped | error
        error TEXT,
        ttft_ms REAL,
        tokens INTEGER,
        tokens_per_s REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX messages_conversation ON messages (conversation_id, id);
    """,
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        name TEXT NOT NULL DEFAULT '',
        prefix TEXT NOT NULL,         -- the key's first characters, to tell keys apart in lists
        digest TEXT NOT NULL UNIQUE,  -- SHA-256 of the key: the key itself is shown once and never stored
        created_at REAL NOT NULL,
        last_used_at REAL,
        revoked_at REAL
    );
    -- NULL: made in open mode (no accounts); such conversations are only visible in open mode.
    ALTER TABLE conversations ADD COLUMN user_id INTEGER REFERENCES users (id) ON DELETE CASCADE;
    CREATE INDEX conversations_user ON conversations (user_id, updated_at DESC);
    """,
    """
    -- A login: the cookie holds a random token, this table only its SHA-256 digest (like API keys). Ending a
    -- session deletes its row, so a copied cookie stops working at once, and nothing brings it back.
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        digest TEXT NOT NULL UNIQUE,
        user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        last_seen_at REAL NOT NULL,
        user_agent TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_user ON sessions (user_id);
    """,
    # Quotas (quotas.py): what each owner stores, kept up to date by triggers on every write, so checking a quota
    # is one primary-key lookup however much is stored, and no code path can forget to count. Owner 0 is open
    # mode (user ids start at 1). Bytes are UTF-8: titles and system prompts, messages' content and thinking.
    """
    CREATE TABLE quota_usage (
        owner INTEGER PRIMARY KEY,
        conversations INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO quota_usage (owner, conversations, bytes)
        SELECT ifnull(user_id, 0), count(*), sum(length(CAST(title AS BLOB)) + length(CAST(system_prompt AS BLOB))
            + ifnull((SELECT sum(length(CAST(content AS BLOB)) + length(CAST(thinking AS BLOB))) FROM messages
                      WHERE conversation_id = conversations.id), 0))
        FROM conversations GROUP BY ifnull(user_id, 0);
    CREATE TRIGGER quota_conversation_added AFTER INSERT ON conversations BEGIN
        INSERT OR IGNORE INTO quota_usage (owner) VALUES (ifnull(NEW.user_id, 0));
        UPDATE quota_usage SET conversations = conversations + 1,
            bytes = bytes + length(CAST(NEW.title AS BLOB)) + length(CAST(NEW.system_prompt AS BLOB))
            WHERE owner = ifnull(NEW.user_id, 0);
    END;
    CREATE TRIGGER quota_conversation_changed AFTER UPDATE OF title, system_prompt ON conversations BEGIN
        UPDATE quota_usage SET bytes = bytes
            + length(CAST(NEW.title AS BLOB)) + length(CAST(NEW.system_prompt AS BLOB))
            - length(CAST(OLD.title AS BLOB)) - length(CAST(OLD.system_prompt AS BLOB))
            WHERE owner = ifnull(NEW.user_id, 0);
    END;
    -- The messages first, while their conversation still says whose they are (ON DELETE CASCADE would delete
    -- them after it, when the message trigger below can no longer find the owner).
    CREATE TRIGGER quota_conversation_deleting BEFORE DELETE ON conversations BEGIN
        DELETE FROM messages WHERE conversation_id = OLD.id;
    END;
    CREATE TRIGGER quota_conversation_deleted AFTER DELETE ON conversations BEGIN
        UPDATE quota_usage SET conversations = conversations - 1,
            bytes = bytes - length(CAST(OLD.title AS BLOB)) - length(CAST(OLD.system_prompt AS BLOB))
            WHERE owner = ifnull(OLD.user_id, 0);
    END;
    CREATE TRIGGER quota_message_added AFTER INSERT ON messages BEGIN
        UPDATE quota_usage SET bytes = bytes + length(CAST(NEW.content AS BLOB)) + length(CAST(NEW.thinking AS BLOB))
            WHERE owner = (SELECT ifnull(user_id, 0) FROM conversations WHERE id = NEW.conversation_id);
    END;
    CREATE TRIGGER quota_message_changed AFTER UPDATE OF content, thinking ON messages BEGIN
        UPDATE quota_usage SET bytes = bytes
            + length(CAST(NEW.content AS BLOB)) + length(CAST(NEW.thinking AS BLOB))
            - length(CAST(OLD.content AS BLOB)) - length(CAST(OLD.thinking AS BLOB))
            WHERE owner = (SELECT ifnull(user_id, 0) FROM conversations WHERE id = NEW.conversation_id);
    END;
    CREATE TRIGGER quota_message_deleted AFTER DELETE ON messages BEGIN
        UPDATE quota_usage SET bytes = bytes - length(CAST(OLD.content AS BLOB)) - length(CAST(OLD.thinking AS BLOB))
            WHERE owner = (SELECT ifnull(user_id, 0) FROM conversations WHERE id = OLD.conversation_id);
    END;
    -- Answers started per owner and day (the server's local date): a counter, not a count of stored answers,
    -- so deleting conversations or regenerating does not give answers back.
    CREATE TABLE quota_answers (
        owner INTEGER NOT NULL,
        day TEXT NOT NULL,  -- YYYY-MM-DD
        answers INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (owner, day)
    );
    """,
    # Conversations as trees (chat/tree.py), search (chat/search.py), imports (chat/transfer.py), share links
    # (chat/shares.py). Databases from before were linear: each message's parent is the one before it.
    """
    ALTER TABLE messages ADD COLUMN parent_id INTEGER REFERENCES messages (id);  -- NULL: the first message
    UPDATE messages SET parent_id = (SELECT max(p.id) FROM messages AS p
                                     WHERE p.conversation_id = messages.conversation_id AND p.id < messages.id);
    CREATE INDEX messages_parent ON messages (conversation_id, parent_id);  -- children, and a conversation's roots
    ALTER TABLE messages ADD COLUMN done_reason TEXT;  -- Ollama's: stop | length (a length-cut answer can continue)
    -- When a continued answer began streaming again (NULL: at created_at). An answer is taken for one a dead process
    -- left streaming only once it streams for longer than the lease without being listed: a continued one is old.
    ALTER TABLE messages ADD COLUMN streaming_since REAL;
    ALTER TABLE conversations ADD COLUMN current_id INTEGER;  -- the leaf of the branch shown
    UPDATE conversations SET current_id = (SELECT max(id) FROM messages WHERE conversation_id = conversations.id);
    ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE conversations ADD COLUMN source TEXT;  -- an imported one's origin (chatgpt:<id>): imports once
    CREATE UNIQUE INDEX conversations_source ON conversations (ifnull(user_id, 0), source) WHERE source IS NOT NULL;
    DROP INDEX conversations_user;
    CREATE INDEX conversations_user ON conversations (user_id, pinned DESC, updated_at DESC, id);  -- the list's order

    -- Search over what is written, not what is being written: an answer is indexed once it stops streaming (a
    -- checkpoint every second would re-index every running answer). Trigram: Chinese and code identifiers match
    -- inside words. External content (the text is stored once, in messages); the triggers only ever remove
    -- what they added, which FTS5 requires of an external-content index.
    CREATE VIRTUAL TABLE messages_search USING fts5 (content, content = 'messages', content_rowid = 'id',
                                                     tokenize = 'trigram');
    INSERT INTO messages_search (rowid, content) SELECT id, content FROM messages WHERE status != 'streaming';
    -- Terms of 1 or 2 characters (Chinese words are often 2: 模型), which trigrams cannot match: a second trigram
    -- index over the text with U+0001 before every character and at the end (clawweb_spaced, storage.spaced),
    -- where "模" is the trigram "␁模␁" and "模型" is "模␁型". Contentless (it keeps no copy of the text) and
    -- detail=none (only which messages hold a trigram, no positions: a short term is always one trigram).
    -- A contentless index's 'delete' must be given exactly the values indexed, hence spaced(OLD.content).
    -- clawweb_spaced is registered on clawweb's own connection (Store._open): any other connection (the sqlite3
    -- shell) reads everything, and a .dump loads (triggers come last), but a write to messages, or deleting a
    -- conversation, fails there ("no such function: clawweb_spaced").
    CREATE VIRTUAL TABLE messages_short USING fts5 (content, content = '', detail = 'none', tokenize = 'trigram');
    INSERT INTO messages_short (rowid, content)
        SELECT id, clawweb_spaced(content) FROM messages WHERE status != 'streaming';
    CREATE TRIGGER messages_search_added AFTER INSERT ON messages WHEN NEW.status != 'streaming' BEGIN
        INSERT INTO messages_search (rowid, content) VALUES (NEW.id, NEW.content);
        INSERT INTO messages_short (rowid, content) VALUES (NEW.id, clawweb_spaced(NEW.content));
    END;
    CREATE TRIGGER messages_search_changed AFTER UPDATE OF content, status ON messages BEGIN
        INSERT INTO messages_search (messages_search, rowid, content)
            SELECT 'delete', OLD.id, OLD.content WHERE OLD.status != 'streaming';
        INSERT INTO messages_short (messages_short, rowid, content)
            SELECT 'delete', OLD.id, clawweb_spaced(OLD.content) WHERE OLD.status != 'streaming';
        INSERT INTO messages_search (rowid, content) SELECT NEW.id, NEW.content WHERE NEW.status != 'streaming';
        INSERT INTO messages_short (rowid, content)
            SELECT NEW.id, clawweb_spaced(NEW.content) WHERE NEW.status != 'streaming';
    END;
    CREATE TRIGGER messages_search_deleted AFTER DELETE ON messages WHEN OLD.status != 'streaming' BEGIN
        INSERT INTO messages_search (messages_search, rowid, content) VALUES ('delete', OLD.id, OLD.content);
        INSERT INTO messages_short (messages_short, rowid, content)
            VALUES ('delete', OLD.id, clawweb_spaced(OLD.content));
    END;
    -- Titles are few and short: a plain index keyed by the conversation's id (its rowid is not stable).
    CREATE VIRTUAL TABLE titles_search USING fts5 (conversation_id UNINDEXED, title, tokenize = 'trigram');
    INSERT INTO titles_search (conversation_id, title) SELECT id, title FROM conversations;
    CREATE TRIGGER titles_search_added AFTER INSERT ON conversations BEGIN
        INSERT INTO titles_search (conversation_id, title) VALUES (NEW.id, NEW.title);
    END;
    CREATE TRIGGER titles_search_changed AFTER UPDATE OF title ON conversations BEGIN
        UPDATE titles_search SET title = NEW.title WHERE conversation_id = NEW.id;
    END;
    CREATE TRIGGER titles_search_deleted AFTER DELETE ON conversations BEGIN
        DELETE FROM titles_search WHERE conversation_id = OLD.id;
    END;

    -- A share link: the token is shown once, only its SHA-256 digest is kept; the branch as it was when shared.
    CREATE TABLE shares (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        digest TEXT NOT NULL UNIQUE,
        conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        snapshot TEXT NOT NULL,  -- JSON: title, model, messages of the branch
        created_at REAL NOT NULL,
        expires_at REAL  -- NULL: until revoked
    );
    CREATE INDEX shares_conversation ON shares (conversation_id);
    """,
    # The figures of an answer's wait (chat/generations.py): in the queue, for a model load, and its thinking.
    """
    ALTER TABLE messages ADD COLUMN queue_ms REAL;
    ALTER TABLE messages ADD COLUMN load_ms REAL;
    ALTER TABLE messages ADD COLUMN thinking_ms REAL;
    """,
    # Keys that may send load requests (a model loaded or unloaded for everyone): `clawweb keys create --admin`.
    """
    ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
    """,
    # The admission lane of a key's requests (state/lanes.py): api, or batch for `clawweb keys create --lane batch`.
    """
    ALTER TABLE api_keys ADD COLUMN lane TEXT NOT NULL DEFAULT 'api';
    """,
]

# PostgreSQL: each entry upgrades the schema by one version (the table schema_version).
POSTGRES = [
    """
    CREATE EXTENSION IF NOT EXISTS citext;   -- user names: unique and found whatever their case (NOCASE)
    CREATE EXTENSION IF NOT EXISTS pg_trgm;  -- search: substrings of 3 characters or more through an index

    CREATE TABLE users (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name CITEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL,
        system_prompt TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        user_id BIGINT REFERENCES users (id) ON DELETE CASCADE,  -- NULL: made in open mode
        current_id BIGINT,  -- the leaf of the branch shown
        pinned INTEGER NOT NULL DEFAULT 0,
        source TEXT  -- an imported one's origin (chatgpt:<id>): imports once
    );
    CREATE INDEX conversations_updated ON conversations (updated_at DESC);
    CREATE UNIQUE INDEX conversations_source ON conversations (coalesce(user_id, 0), source) WHERE source IS NOT NULL;
    CREATE INDEX conversations_user ON conversations (user_id, pinned DESC, updated_at DESC, id);
    CREATE INDEX conversations_title_trgm ON conversations USING gin (title gin_trgm_ops);
    CREATE TABLE messages (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL DEFAULT '',
        thinking TEXT NOT NULL DEFAULT '',
        model TEXT,
        status TEXT NOT NULL DEFAULT 'done',  -- done | streaming | stopped | error
        error TEXT,
        ttft_ms DOUBLE PRECISION,
        tokens INTEGER,
        tokens_per_s DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        parent_id BIGINT REFERENCES messages (id),  -- NULL: the first message
        done_reason TEXT,
        streaming_since DOUBLE PRECISION,
        queue_ms DOUBLE PRECISION,
        load_ms DOUBLE PRECISION,
        thinking_ms DOUBLE PRECISION
    );
    CREATE INDEX messages_conversation ON messages (conversation_id, id);
    CREATE INDEX messages_parent ON messages (conversation_id, parent_id);
    -- What is written, not what is being written (as SQLite's FTS5 index): answers are searched once ended.
    CREATE INDEX messages_content_trgm ON messages USING gin (content gin_trgm_ops) WHERE status != 'streaming';
    CREATE TABLE api_keys (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        name TEXT NOT NULL DEFAULT '',
        prefix TEXT NOT NULL,
        digest TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION,
        admin INTEGER NOT NULL DEFAULT 0,
        lane TEXT NOT NULL DEFAULT 'api'
    );
    CREATE TABLE sessions (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at DOUBLE PRECISION NOT NULL,
        last_seen_at DOUBLE PRECISION NOT NULL,
        user_agent TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_user ON sessions (user_id);
    CREATE TABLE shares (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        snapshot TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION
    );
    CREATE INDEX shares_conversation ON shares (conversation_id);

    -- Quotas: the same counts as SQLite's triggers keep (owner 0 is open mode; bytes are UTF-8).
    CREATE TABLE quota_usage (
        owner BIGINT PRIMARY KEY,
        conversations BIGINT NOT NULL DEFAULT 0,
        bytes BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE quota_answers (
        owner BIGINT NOT NULL,
        day TEXT NOT NULL,
        answers INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (owner, day)
    );
    CREATE FUNCTION quota_add(who BIGINT, conversations BIGINT, bytes BIGINT) RETURNS void LANGUAGE sql AS $$
        INSERT INTO quota_usage AS q (owner, conversations, bytes) VALUES (who, conversations, bytes)
        ON CONFLICT (owner) DO UPDATE SET conversations = q.conversations + EXCLUDED.conversations,
                                          bytes = q.bytes + EXCLUDED.bytes
    $$;
    CREATE FUNCTION quota_conversation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            PERFORM quota_add(coalesce(OLD.user_id, 0), CASE TG_OP WHEN 'DELETE' THEN -1 ELSE 0 END,
                              -octet_length(OLD.title) - octet_length(OLD.system_prompt));
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            PERFORM quota_add(coalesce(NEW.user_id, 0), CASE TG_OP WHEN 'INSERT' THEN 1 ELSE 0 END,
                              octet_length(NEW.title) + octet_length(NEW.system_prompt));
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER quota_conversation AFTER INSERT OR DELETE OR UPDATE OF title, system_prompt ON conversations
        FOR EACH ROW EXECUTE FUNCTION quota_conversation();
    -- A conversation's messages go first, while it still says whose they are (as in SQLite's migration 4).
    CREATE FUNCTION quota_conversation_deleting() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM messages WHERE conversation_id = OLD.id;
        RETURN OLD;
    END $$;
    CREATE TRIGGER quota_conversation_deleting BEFORE DELETE ON conversations
        FOR EACH ROW EXECUTE FUNCTION quota_conversation_deleting();
    CREATE FUNCTION quota_message() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        delta BIGINT := 0;
        conversation TEXT;
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            delta := delta - octet_length(OLD.content) - octet_length(OLD.thinking);
            conversation := OLD.conversation_id;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            delta := delta + octet_length(NEW.content) + octet_length(NEW.thinking);
            conversation := NEW.conversation_id;
        END IF;
        IF delta != 0 THEN
            UPDATE quota_usage SET bytes = bytes + delta
                WHERE owner = (SELECT coalesce(user_id, 0) FROM conversations WHERE id = conversation);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER quota_message AFTER INSERT OR DELETE OR UPDATE OF content, thinking ON messages
        FOR EACH ROW EXECUTE FUNCTION quota_message();
    """,
]
