-- Wireshark / tshark dissector for swapctl captures and the Protocol V2 messages inside.
--
-- swapctl writes pcapng with link type LINKTYPE_USER0 (147). Each packet is one record:
--   u8 version (1) | u8 kind | u16 flags | u32 connection id | data
-- kinds: 1 write (client -> relay), 2 read (relay -> client), 3 open (data: client JSON),
-- 4 close, 5 eof (the relay closed the client), 6 settle, 7 pause, 8 resume.
-- flags: bit 0 the writer waited until the relay read it; bit 1 continues in the next record.
-- The data of write and read records is dissected as Protocol V2: 32-byte header
-- (little-endian: magic 0xDEADBEEF, relay_domain, version, source, flags, sequence,
-- timestamp, payload_size, checksum) and TLVs (standard [type][len][value], extended
-- [0xFF][0x00][type][len u16][value]). Bytes that cannot start a message are shown as
-- garbage; a message that runs past the end of the record as a fragment.
--
-- Use: wireshark -X lua_script:tools/wireshark/protocol_v2.lua capture.pcapng
--      tshark -X lua_script:tools/wireshark/protocol_v2.lua -r capture.pcapng -V
-- or copy this file to ~/.local/lib/wireshark/plugins/. Filters: swapctl.conn == 3,
-- pv2.sequence == 42, pv2.tlv.type == 1, pv2.garbage, pv2.fragment.

local rec = Proto("swapctl", "swapctl capture record")
local pv2 = Proto("pv2", "Protocol V2")

local kinds = { [1] = "write", [2] = "read", [3] = "open", [4] = "close", [5] = "eof",
                [6] = "settle", [7] = "pause", [8] = "resume" }
local tlv_names = { [1] = "Trade", [2] = "Quote", [3] = "OrderBook", [11] = "PoolSwap",
                    [12] = "PoolMint", [13] = "PoolBurn", [14] = "PoolTick", [15] = "PoolState",
                    [16] = "PoolSync", [18] = "GasPrice", [32] = "ArbitrageSignal",
                    [100] = "Heartbeat", [107] = "SystemHealth", [108] = "TraceContext" }

local r_version = ProtoField.uint8("swapctl.version", "Format version")
local r_kind = ProtoField.uint8("swapctl.kind", "Kind", base.DEC, kinds)
local r_flags = ProtoField.uint16("swapctl.flags", "Flags", base.HEX)
local r_wait = ProtoField.bool("swapctl.flags.wait", "Writer waited for the relay to read", 16, nil, 0x0001)
local r_more = ProtoField.bool("swapctl.flags.more", "Continues in the next record", 16, nil, 0x0002)
local r_conn = ProtoField.uint32("swapctl.conn", "Connection id")
local r_client = ProtoField.string("swapctl.client", "Client")
local r_len = ProtoField.uint32("swapctl.length", "Data length")
rec.fields = { r_version, r_kind, r_flags, r_wait, r_more, r_conn, r_client, r_len }

local f_magic = ProtoField.uint32("pv2.magic", "Magic", base.HEX)
local f_domain = ProtoField.uint8("pv2.domain", "Relay domain")
local f_version = ProtoField.uint8("pv2.version", "Version")
local f_source = ProtoField.uint8("pv2.source", "Source")
local f_flags = ProtoField.uint8("pv2.flags", "Flags", base.HEX)
local f_seq = ProtoField.uint64("pv2.sequence", "Sequence")
local f_ts = ProtoField.uint64("pv2.timestamp", "Timestamp (ns since epoch)")
local f_size = ProtoField.uint32("pv2.payload_size", "Payload size")
local f_crc = ProtoField.uint32("pv2.checksum", "Checksum (0 = not computed)", base.HEX)
local f_tlv = ProtoField.bytes("pv2.tlv", "TLV")
local f_ttype = ProtoField.uint8("pv2.tlv.type", "TLV type", base.DEC, tlv_names)
local f_tlen = ProtoField.uint16("pv2.tlv.length", "TLV length")
local f_text = ProtoField.bool("pv2.tlv.extended", "Extended TLV")
local f_tval = ProtoField.bytes("pv2.tlv.value", "TLV value")
local f_asset = ProtoField.uint64("pv2.trade.asset_id", "Asset id")
local f_price = ProtoField.int64("pv2.trade.price", "Price (x1e8)")
local f_volume = ProtoField.int64("pv2.trade.volume", "Volume (x1e8)")
local f_side = ProtoField.uint8("pv2.trade.side", "Side", base.DEC, { [0] = "buy", [1] = "sell" })
local f_garbage = ProtoField.bytes("pv2.garbage", "Not Protocol V2 (skipped by a framing consumer)")
local f_fragment = ProtoField.bytes("pv2.fragment", "Message fragment (continues past this record)")
pv2.fields = { f_magic, f_domain, f_version, f_source, f_flags, f_seq, f_ts, f_size, f_crc,
               f_tlv, f_ttype, f_tlen, f_text, f_tval, f_asset, f_price, f_volume, f_side,
               f_garbage, f_fragment }

local e_garbage = ProtoExpert.new("pv2.garbage.expert", "Bytes that are not a Protocol V2 message",
                                  expert.group.MALFORMED, expert.severity.WARN)
local e_fragment = ProtoExpert.new("pv2.fragment.expert", "Message split across records",
                                   expert.group.REASSEMBLE, expert.severity.NOTE)
local e_tlv = ProtoExpert.new("pv2.tlv.expert", "TLVs do not fill the payload exactly",
                              expert.group.MALFORMED, expert.severity.WARN)
pv2.experts = { e_garbage, e_fragment, e_tlv }

local MAGIC = 0xDEADBEEF
local HEADER = 32
local MAX_MESSAGE = 1048576

local function is_magic(tvb, pos)
    return tvb:len() - pos >= 4 and tvb(pos, 4):le_uint() == MAGIC
end

local function dissect_tlvs(tvb, start, stop, tree)
    local pos = start
    while pos < stop do
        local ext = tvb(pos, 1):uint() == 0xFF
        local head = ext and 5 or 2
        if stop - pos < head then break end
        local ttype = ext and tvb(pos + 2, 1):uint() or tvb(pos, 1):uint()
        local tlen = ext and tvb(pos + 3, 2):le_uint() or tvb(pos + 1, 1):uint()
        if pos + head + tlen > stop then break end
        local name = tlv_names[ttype] or (ttype >= 200 and "vendor" or "type " .. ttype)
        local t = tree:add(f_tlv, tvb(pos, head + tlen))
        t:set_text(string.format("TLV %s (%d), %d bytes%s", name, ttype, tlen, ext and ", extended" or ""))
        t:add(f_ttype, tvb(ext and pos + 2 or pos, 1))
        t:add_le(f_tlen, tvb(ext and pos + 3 or pos + 1, ext and 2 or 1))
        t:add(f_text, ext)
        if tlen > 0 then t:add(f_tval, tvb(pos + head, tlen)) end
        if ttype == 1 and tlen == 40 then
            local v = pos + head
            t:add_le(f_asset, tvb(v, 8))
            t:add_le(f_price, tvb(v + 8, 8))
            t:add_le(f_volume, tvb(v + 16, 8))
            t:add(f_side, tvb(v + 36, 1))
        end
        pos = pos + head + tlen
    end
    if pos ~= stop then tree:add_proto_expert_info(e_tlv) end
end

-- Dissects the messages in tvb(start..); returns how many were complete and their sequences.
local function dissect_messages(tvb, start, tree)
    local pos, n, first, last = start, 0, nil, nil
    local len = tvb:len()
    while pos < len do
        if not is_magic(tvb, pos) then
            local nxt = pos + 1
            while nxt < len and not is_magic(tvb, nxt) do nxt = nxt + 1 end
            local g = tree:add(f_garbage, tvb(pos, nxt - pos))
            g:add_proto_expert_info(e_garbage)
            pos = nxt
        elseif len - pos < HEADER or HEADER + tvb(pos + 24, 4):le_uint() > len - pos then
            local f = tree:add(f_fragment, tvb(pos, len - pos))
            f:add_proto_expert_info(e_fragment)
            break
        else
            local size = tvb(pos + 24, 4):le_uint()
            if HEADER + size > MAX_MESSAGE then
                local g = tree:add(f_garbage, tvb(pos, 4))
                g:add_proto_expert_info(e_garbage)
                pos = pos + 1
            else
                local seq = tvb(pos + 8, 8):le_uint64()
                local m = tree:add(pv2, tvb(pos, HEADER + size))
                m:set_text(string.format("Protocol V2, domain %d, source %d, seq %s, %d payload bytes",
                    tvb(pos + 4, 1):uint(), tvb(pos + 6, 1):uint(), tostring(seq), size))
                m:add_le(f_magic, tvb(pos, 4))
                m:add(f_domain, tvb(pos + 4, 1))
                m:add(f_version, tvb(pos + 5, 1))
                m:add(f_source, tvb(pos + 6, 1))
                m:add(f_flags, tvb(pos + 7, 1))
                m:add_le(f_seq, tvb(pos + 8, 8))
                m:add_le(f_ts, tvb(pos + 16, 8))
                m:add_le(f_size, tvb(pos + 24, 4))
                m:add_le(f_crc, tvb(pos + 28, 4))
                dissect_tlvs(tvb, pos + HEADER, pos + HEADER + size, m)
                n = n + 1
                first = first or seq
                last = seq
                pos = pos + HEADER + size
            end
        end
    end
    return n, first, last
end

function rec.dissector(tvb, pinfo, tree)
    if tvb:len() < 8 then return 0 end
    pinfo.cols.protocol = "SWAPCTL"
    local kind = tvb(1, 1):uint()
    local conn = tvb(4, 4):le_uint()
    local t = tree:add(rec, tvb(0, 8))
    t:add(r_version, tvb(0, 1))
    t:add(r_kind, tvb(1, 1))
    local fl = t:add_le(r_flags, tvb(2, 2))
    fl:add_le(r_wait, tvb(2, 2))
    fl:add_le(r_more, tvb(2, 2))
    t:add_le(r_conn, tvb(4, 4))
    t:add(r_len, tvb:len() - 8)
    local name = kinds[kind] or ("kind " .. kind)
    local info = string.format("%s conn %d", name, conn)
    if kind == 3 and tvb:len() > 8 then
        t:add(r_client, tvb(8))
        info = info .. " " .. tvb(8):string()
    elseif (kind == 1 or kind == 2) and tvb:len() > 8 then
        pinfo.cols.protocol = "PV2"
        local n, first, last = dissect_messages(tvb, 8, tree)
        info = string.format("%s, %d bytes, %d message%s", info, tvb:len() - 8, n, n == 1 and "" or "s")
        if first then info = info .. string.format(" (seq %s..%s)", tostring(first), tostring(last)) end
    end
    pinfo.cols.info = info
    return tvb:len()
end

DissectorTable.get("wtap_encap"):add(wtap.USER0, rec)
