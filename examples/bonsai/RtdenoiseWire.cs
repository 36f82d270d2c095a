// rtdenoise's wire format for C# (.NET Framework 4.7.2 as Bonsai 2 runs, Mono, .NET): no dependencies.
//
// An input message is three ZeroMQ frames: the topic "frames/<stream>", this header, the raw frame
// (row-major, little-endian). The header is a msgpack map of eight fields, packed here by hand,
// byte for byte as docs/integrations.md shows. ReadHeader reads the headers the service sends back
// on "denoised/<stream>" (a msgpack map: seq, n, shape, dtype "<f4", t_ns, gap, warm, lag, ...).
// tests/test_bonsai.py compiles this file with Mono and checks both against a live service.
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

public static class RtdenoiseWire
{
    /// <summary>The header of one frame of <paramref name="stream"/> (a name under 32 bytes),
    /// <paramref name="height"/> x <paramref name="width"/> samples of <paramref name="dtype"/>
    /// ("&lt;u2" for uint16, "&lt;i2" int16, "&lt;f4" float32); fs: frames per second.</summary>
    public static byte[] Header(string stream, ulong seq, int height, int width, ulong tNs, double fs, string dtype = "<u2")
    {
        var b = new MemoryStream();
        b.WriteByte(0x88);                                 // a map of 8
        Str(b, "v"); b.WriteByte(0x01);
        Str(b, "stream"); Str(b, stream);
        Str(b, "seq"); b.WriteByte(0xcf); BigEndian(b, BitConverter.GetBytes(seq));
        Str(b, "n"); b.WriteByte(0x01);
        Str(b, "shape"); b.WriteByte(0x92);                // an array of 2: height, width
        b.WriteByte(0xcd); BigEndian(b, BitConverter.GetBytes((ushort)height));
        b.WriteByte(0xcd); BigEndian(b, BitConverter.GetBytes((ushort)width));
        Str(b, "dtype"); Str(b, dtype);
        Str(b, "t_ns"); b.WriteByte(0xcf); BigEndian(b, BitConverter.GetBytes(tNs));
        Str(b, "fs"); b.WriteByte(0xcb); BigEndian(b, BitConverter.GetBytes(fs));
        return b.ToArray();
    }

    /// <summary>Nanoseconds since the Unix epoch, now (UTC).</summary>
    public static ulong NowNs()
    {
        return (ulong)(DateTime.UtcNow - new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc)).Ticks * 100UL;
    }

    static void Str(Stream b, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        if (bytes.Length > 31) throw new ArgumentException("a name of at most 31 bytes: " + s);
        b.WriteByte((byte)(0xa0 + bytes.Length));
        b.Write(bytes, 0, bytes.Length);
    }

    static void BigEndian(Stream b, byte[] bytes)
    {
        if (BitConverter.IsLittleEndian) Array.Reverse(bytes);
        b.Write(bytes, 0, bytes.Length);
    }

    /// <summary>A header from the service as a dictionary: integers as long (ulong past its range),
    /// floats as double, strings, bools, null, lists (object[]) and maps.</summary>
    public static Dictionary<string, object> ReadHeader(byte[] header)
    {
        int i = 0;
        var map = Read(header, ref i) as Dictionary<string, object>;
        if (map == null || i != header.Length) throw new FormatException("not an rtdenoise header: one msgpack map");
        return map;
    }

    static object Read(byte[] d, ref int i)
    {
        byte t = d[i++];
        if (t <= 0x7f) return (long)t;
        if (t >= 0xe0) return (long)(sbyte)t;
        if (t >= 0xa0 && t <= 0xbf) return Text(d, ref i, t - 0xa0);
        if (t >= 0x90 && t <= 0x9f) return List(d, ref i, t - 0x90);
        if (t >= 0x80 && t <= 0x8f) return Map(d, ref i, t - 0x80);
        switch (t)
        {
            case 0xc0: return null;
            case 0xc2: return false;
            case 0xc3: return true;
            case 0xca: return (double)BitConverter.ToSingle(Be(d, ref i, 4), 0);
            case 0xcb: return BitConverter.ToDouble(Be(d, ref i, 8), 0);
            case 0xcc: return (long)d[i++];
            case 0xcd: return (long)BitConverter.ToUInt16(Be(d, ref i, 2), 0);
            case 0xce: return (long)BitConverter.ToUInt32(Be(d, ref i, 4), 0);
            case 0xcf: { ulong u = BitConverter.ToUInt64(Be(d, ref i, 8), 0); return u <= long.MaxValue ? (object)(long)u : u; }
            case 0xd0: return (long)(sbyte)d[i++];
            case 0xd1: return (long)BitConverter.ToInt16(Be(d, ref i, 2), 0);
            case 0xd2: return (long)BitConverter.ToInt32(Be(d, ref i, 4), 0);
            case 0xd3: return BitConverter.ToInt64(Be(d, ref i, 8), 0);
            case 0xd9: return Text(d, ref i, d[i++]);
            case 0xda: return Text(d, ref i, BitConverter.ToUInt16(Be(d, ref i, 2), 0));
            case 0xdc: return List(d, ref i, BitConverter.ToUInt16(Be(d, ref i, 2), 0));
            case 0xde: return Map(d, ref i, BitConverter.ToUInt16(Be(d, ref i, 2), 0));
        }
        throw new FormatException(string.Format("msgpack type 0x{0:x2} is not used in rtdenoise headers", t));
    }

    static byte[] Be(byte[] d, ref int i, int n)
    {
        var b = new byte[n];
        Array.Copy(d, i, b, 0, n);
        i += n;
        if (BitConverter.IsLittleEndian) Array.Reverse(b);
        return b;
    }

    static string Text(byte[] d, ref int i, int n)
    {
        var s = Encoding.UTF8.GetString(d, i, n);
        i += n;
        return s;
    }

    static object[] List(byte[] d, ref int i, int n)
    {
        var a = new object[n];
        for (int k = 0; k < n; k++) a[k] = Read(d, ref i);
        return a;
    }

    static Dictionary<string, object> Map(byte[] d, ref int i, int n)
    {
        var m = new Dictionary<string, object>();
        for (int k = 0; k < n; k++)
        {
            var key = Read(d, ref i) as string;
            if (key == null) throw new FormatException("a header's keys are strings");
            m[key] = Read(d, ref i);
        }
        return m;
    }
}
