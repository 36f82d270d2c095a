// Bonsai operators for rtdenoise: put this file and RtdenoiseWire.cs in the workflow's Extensions
// folder (Bonsai compiles them). Needs the Bonsai.ZeroMQ (NetMQ) and Bonsai.Vision (OpenCV.Net) packages.
//
//   camera (IplImage, 1 channel, 16-bit) -> RtdenoiseFrames -> Publisher  (Topic frames/scope1, @tcp://127.0.0.1:5555)
//   Subscriber (Topic denoised/scope1, >tcp://127.0.0.1:5556) -> RtdenoiseImage -> (IplImage, 32-bit float)
//
// with `rtdenoise serve --sub tcp://127.0.0.1:5555 --pub tcp://127.0.0.1:5556 --model imaging-lag0`.
// The Publisher sends its Topic as the first frame, then the message's frames: [topic, header, raw frame],
// the three parts the service takes. See docs/integrations.md.
using System;
using System.ComponentModel;
using System.Reactive.Linq;
using System.Runtime.InteropServices;
using Bonsai;
using NetMQ;
using OpenCV.Net;

[Combinator]
[Description("Packs each 16-bit single-channel image as an rtdenoise frame message (header, raw frame) for a Publisher whose Topic is frames/<Stream>.")]
[WorkflowElementCategory(ElementCategory.Transform)]
public class RtdenoiseFrames
{
    [Description("The stream's name: the Publisher's Topic must be frames/ followed by it.")]
    public string Stream { get; set; } = "scope1";

    [Description("Frames per second of the acquisition (the header's fs).")]
    public double FrameRate { get; set; } = 30.0;

    public IObservable<NetMQMessage> Process(IObservable<IplImage> source)
    {
        return Observable.Defer(() =>
        {
            ulong seq = 0;  // per subscription: a new run of the workflow is a restarted acquisition
            return source.Select(image =>
            {
                if (image.Channels != 1 || (image.Depth != IplDepth.U16 && image.Depth != IplDepth.S16))
                    throw new InvalidOperationException("rtdenoise takes single-channel 16-bit images; convert first (e.g. ConvertScale)");
                int w = image.Width, h = image.Height, row = w * 2;
                var payload = new byte[row * h];
                for (int y = 0; y < h; y++)  // rows may be padded (WidthStep): copy row by row
                    Marshal.Copy(image.ImageData + y * image.WidthStep, payload, y * row, row);
                var dtype = image.Depth == IplDepth.U16 ? "<u2" : "<i2";
                var message = new NetMQMessage(2);
                message.Append(RtdenoiseWire.Header(Stream, seq++, h, w, RtdenoiseWire.NowNs(), FrameRate, dtype));
                message.Append(payload);
                return message;
            });
        });
    }
}

[Combinator]
[Description("Reads a denoised/<stream> message from a Subscriber as a 32-bit float image.")]
[WorkflowElementCategory(ElementCategory.Transform)]
public class RtdenoiseImage
{
    public IObservable<IplImage> Process(IObservable<NetMQMessage> source)
    {
        return source.Select(message =>
        {
            var header = RtdenoiseWire.ReadHeader(message[1].ToByteArray());
            var shape = (object[])header["shape"];
            int h = (int)(long)shape[0], w = (int)(long)shape[1], n = (int)(long)header["n"];
            var data = message[2].ToByteArray();
            var image = new IplImage(new Size(w, h), IplDepth.F32, 1);
            int row = w * 4, last = (n - 1) * h * row;  // several frames (a backlog): the newest
            for (int y = 0; y < h; y++)
                Marshal.Copy(data, last + y * row, image.ImageData + y * image.WidthStep, row);
            return image;
        });
    }
}
