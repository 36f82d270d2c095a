// Driver for tests/test_bonsai.py: examples/bonsai/RtdenoiseWire.cs from the command line.
//   header STREAM SEQ H W T_NS FS DTYPE [COUNT] -> the header's bytes, hex, a line each (seq, t_ns + 1 each)
//   read FILE                             -> each field of the header in FILE as key=value (lists as [a,b])
using System;
using System.Globalization;
using System.IO;
using System.Linq;

public static class RtdenoiseWireCheck
{
    public static int Main(string[] a)
    {
        var inv = CultureInfo.InvariantCulture;
        if (a[0] == "header")
        {
            int count = a.Length > 8 ? int.Parse(a[8]) : 1;
            for (uint k = 0; k < count; k++)  // COUNT headers: seq and t_ns one more each
            {
                var b = RtdenoiseWire.Header(a[1], ulong.Parse(a[2]) + k, int.Parse(a[3]), int.Parse(a[4]),
                                             ulong.Parse(a[5]) + k, double.Parse(a[6], inv), a[7]);
                Console.WriteLine(BitConverter.ToString(b).Replace("-", " ").ToLowerInvariant());
            }
            return 0;
        }
        foreach (var kv in RtdenoiseWire.ReadHeader(File.ReadAllBytes(a[1])).OrderBy(kv => kv.Key, StringComparer.Ordinal))
            Console.WriteLine(kv.Key + "=" + Show(kv.Value, inv));
        return 0;
    }

    static string Show(object v, IFormatProvider inv)
    {
        if (v == null) return "null";
        if (v is object[]) return "[" + string.Join(",", ((object[])v).Select(x => Show(x, inv))) + "]";
        if (v is bool) return (bool)v ? "true" : "false";
        if (v is double) return ((double)v).ToString("R", inv);
        return Convert.ToString(v, inv);
    }
}
